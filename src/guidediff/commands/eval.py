"""`guidediff eval`: FID (with its floor), KID, IS, CAS, precision/recall of samples, against
Fashion-MNIST or a user's image folder."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate generated samples (FID with floor, KID, IS, CAS, P/R) against Fashion-MNIST or your folder",
        description="Evaluate samples against the Fashion-MNIST reference with the evaluation "
                    "classifier's features. SAMPLES is a .npz (x uint8 [N,H,W,C], optional y int64, "
                    "-1 = unconditional) or a folder of PNGs (flat, or one sub-folder per class index).",
    )
    p.add_argument("samples", metavar="SAMPLES", help="samples .npz or image folder")
    p.add_argument("--ref", default="test", metavar="test|train|FOLDER",
                   help="reference set: the 10k Fashion-MNIST test images (default), the floor's 10k training "
                        "images, or your image folder (one sub-folder per class; needs --classifier trained "
                        "on it by `guidediff train-classifier --data FOLDER`)")
    p.add_argument("--json", metavar="OUT.json", default=None, help="write the metrics here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file (it is refused otherwise)")
    p.add_argument("--classifier", metavar="PATH", default=None,
                   help="evaluation classifier weights (default: the shipped ones)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (or .safetensors): also report standard FID")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx .gz files")
    p.add_argument("--batch-size", type=int, default=1000)
    p.set_defaults(func=run)


def _table(result: dict) -> str:
    from guidediff.metrics.evaluate import feature_tag

    n, tag = result["n"], feature_tag(result)
    rows = [("n", str(n)),
            (f"FID-{tag}", f"{result['fid']:.4g}  (floor {result['fid_floor']:.4g})")]
    if "fid_inception" in result:
        rows.append(("FID-Inception", f"{result['fid_inception']:.4g}  (floor {result['fid_inception_floor']:.4g})"))
    rows += [(f"KID-{tag}", f"{result['kid']['mean']:.5f} ± {result['kid']['std']:.5f}"),
             (f"IS-{tag}", f"{result['is']:.3f}")]
    cas = result["cas"]
    if cas is None:
        rows.append(("CAS", "- (no class labels)"))
    else:
        rows.append(("CAS", f"{cas['overall']:.2%}  (n={cas['n']})"))
        rows += [(f"  class {c}", f"{v:.2%}") for c, v in cas["per_class"].items()]
    rows += [("precision", f"{result['precision']:.4f}"), ("recall", f"{result['recall']:.4f}")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import tempfile
    from pathlib import Path

    from guidediff.errors import UsageError
    from guidediff.metrics.evaluate import evaluate_samples, format_summary
    from guidediff.metrics.samples import load_samples

    from guidediff.commands._outputs import check_device, check_out_file

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_device(args.device)
    out = check_out_file(args.json, flag="--json", suffix=".json", overwrite=args.overwrite)
    images, labels = load_samples(args.samples)
    result = evaluate_samples(images, labels, classifier=args.classifier, ref=args.ref, device=args.device,
                              data_dir=args.data_dir, inception_weights=args.inception_weights,
                              batch_size=args.batch_size)
    print(_table(result))
    print(format_summary(result))
    if out is not None:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
        print(f"wrote {out}")
    return 0
