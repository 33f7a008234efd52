"""`guidediff toy`: guidance on 2-D Gaussian mixtures against exact ground truth."""

from __future__ import annotations

import argparse
import sys

from guidediff.commands._guidance_args import guidance_names
from guidediff.commands._sampler_args import add_grid_argument, sampler_names
from guidediff.errors import UsageError


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """'-1,0,3' -> (-1.0, 0.0, 3.0); anything non-numeric or non-finite is a UsageError."""
    from guidediff.parsing import parse_floats as parse

    return tuple(parse(text, option))


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'0,2' -> (0, 2); anything else is a UsageError."""
    try:
        values = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option} is empty; give comma-separated integers, e.g. {option}=0,1")
    return values


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "toy",
        help="guided sampling on 2-D Gaussian mixtures, compared with exact scores and the exact tilted density",
        description=(
            "Train a small MLP on a 2-D mixture (or use its exact scores with --oracle), sample every "
            "class at every guidance weight, and compare with the exact-score sampler and exact draws "
            "of p(x|c)·p(c|x)^w. Writes samples.npz, dataset.json, metrics.json and toy.png. "
            "w is the CFG paper's weight: eps = (1+w)·eps(z,c) − w·eps(z); diffusers' guidance_scale is 1+w."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default="gmm3", help="dataset: gmm3, grid25 or ring8")
    p.add_argument("--oracle", action="store_true", help="sample with the exact scores; train nothing")
    p.add_argument("--w", default="-1,0,3", help="CFG weights, comma-separated (write --w=-1,0,3 when the list starts with '-')")
    p.add_argument("--guidance", default="cfg", help="cfg, or classifier: the exact Bayes classifier with --oracle, "
                                                     "else a noisy MLP classifier trained here (--classifier-steps); "
                                                     "or any registered method without a guide model: "
                                                     + ", ".join(guidance_names()))
    p.add_argument("--guidance-opt", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of the guidance method (repeatable)")
    p.add_argument("--sampler-opt", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of the sampler (repeatable)")
    p.add_argument("--base", default="uncond", help="classifier guidance on the uncond(itional) or cond(itional) model")
    p.add_argument(
        "--scale", default=None,
        help="classifier-guidance scales s, comma-separated; default: 1+w for --base uncond (the same tilt as CFG with w), w for cond",
    )
    p.add_argument("--classes", default=None, help="classes to sample, comma-separated (default: all)")
    p.add_argument("--n", type=int, default=None, help="samples per (class, weight); default 20000 with --oracle, else 2000")
    p.add_argument("--steps", type=int, default=100, help="sampling steps")
    p.add_argument("--sampler", default="ddim", help="one of " + ", ".join(sampler_names()))
    add_grid_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lam-min", type=float, default=-20.0, help="log-SNR at u = 1 (CFG schedule)")
    p.add_argument("--lam-max", type=float, default=20.0, help="log-SNR at u = 0 (CFG schedule)")
    p.add_argument("--train-steps", type=int, default=3000, help="MLP training steps")
    p.add_argument("--classifier-steps", type=int, default=1000,
                   help="noisy-classifier training steps (--guidance classifier without --oracle)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--p-uncond", type=float, default=0.15, help="label dropout probability in training")
    p.add_argument("--out", default="runs/toy", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace what an existing --out holds (it is refused otherwise)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small tensors; 2+ helps only on an idle machine)")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.set_defaults(func=run)


def config_from_args(args):
    """The ToyConfig for parsed arguments (UsageError on a bad list)."""
    from guidediff.commands._guidance_args import sampler_options
    from guidediff.guidance import get_guidance
    from guidediff.options import parse_assignments
    from guidediff.toy.run import ToyConfig

    spec = get_guidance(args.guidance)
    declared = {o.name: o for o in spec.options}
    weights = parse_floats(args.w, "--w")
    if spec.weight == "scale":
        if args.scale is not None:
            weights = parse_floats(args.scale, "--scale")
        elif args.base == "uncond":
            weights = tuple(v + 1.0 for v in weights)
    elif args.scale is not None:
        raise UsageError("--scale is for --guidance classifier; with CFG give the weights as --w")
    return ToyConfig(
        data=args.data,
        oracle=args.oracle,
        w=weights,
        classes=None if args.classes is None else parse_ints(args.classes, "--classes"),
        n=args.n,
        steps=args.steps,
        sampler=args.sampler,
        grid=args.grid,
        sigma_max=args.sigma_max,
        seed=args.seed,
        guidance=args.guidance,
        base=args.base,
        guidance_options=parse_assignments(args.guidance_opt, declared, f"guidance {spec.name}"),
        sampler_options=sampler_options(args, args.sampler),
        lam_min=args.lam_min,
        lam_max=args.lam_max,
        train_steps=args.train_steps,
        classifier_steps=args.classifier_steps,
        batch_size=args.batch_size,
        p_uncond=args.p_uncond,
        out=args.out,
        plot=not args.no_plot,
        threads=args.threads,
        progress=sys.stderr.isatty(),
    )


def run(args) -> int:
    import time

    from guidediff.toy.run import format_table, run_toy

    from guidediff.commands._outputs import claim_out_dir

    config = config_from_args(args)
    claim_out_dir(args.out, overwrite=args.overwrite)
    start = time.time()
    result = run_toy(config)
    print(f"\n{result.metrics['data']}: sliced Wasserstein-2 distances, samples from the {result.metrics['samples_from']}")
    print(format_table(result.metrics["results"]))
    print("(a) trained model vs exact-score sampler (same noise); (b) exact-score sampler vs exact draws of "
          "p(x|c)p(c|x)^w; (c) two exact draws of that tilt (the noise floor of (b))")
    for name, path in result.paths.items():
        print(f"wrote {name:8s} {path}")
    print(f"done in {time.time() - start:.1f} s")
    return 0
