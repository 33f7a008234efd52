"""Several Fashion-MNIST model files scored side by side with the same seeds, sampler and sample
count: FID-FMNIST, CAS, precision/recall at a few guidance weights. Small enough for a CPU when a
GPU is not at hand (then read the FIDs only against each other: few samples bias FID upwards).

    python benchmarks/model_check.py runs/a.safetensors fmnist-cfg --w 0,0.3 --n 500 \\
        --sampler dpmpp-2m --grid lambda --steps 10 --name model_check_cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fmnist_eval  # noqa: E402

from guidediff.loading import load_model  # noqa: E402
from guidediff.errors import UsageError  # noqa: E402
from guidediff.runtime import resolve_device  # noqa: E402


def model_provenance(source: str) -> dict:
    """What the weights that load_model scores say of their training (step, training time,
    commit), recorded with the scores: a shipped name points at another file once the model is
    re-shipped. A run or checkpoint directory: the state.json of the checkpoint it loads (the
    latest); a .safetensors model or shipped name: the model.json written beside it."""
    from guidediff.checkpoint import STATE_FILE, resolve_checkpoint
    from guidediff.models import is_shipped_name, shipped_path

    path = shipped_path(source) if is_shipped_name(source) else Path(source).expanduser()
    info_file = path.with_suffix(".json") if path.is_file() else resolve_checkpoint(path) / STATE_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return {k: info[k] for k in ("step", "training_time_s", "commit") if k in info}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model files, run dirs or shipped names")
    p.add_argument("--w", default="0,0.3")
    p.add_argument("--n", type=int, default=500, help="samples per w (split over the 10 classes)")
    p.add_argument("--sampler", default="dpmpp-2m")
    p.add_argument("--grid", default="lambda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sigma-max", type=float, default=None, help="start the grid at this sigma/alpha (EDM: 80)")
    p.add_argument("--name", default="model_check")
    p.add_argument("--no-compile", action="store_true",
                   help="sample eagerly on a GPU too (cheaper than compiling each model for a few thousand samples)")
    args = p.parse_args()
    try:
        ws = [float(v) for v in args.w.split(",")]
    except ValueError:
        raise SystemExit(f"error: --w {args.w!r} must be a comma list of numbers, e.g. --w 0,0.3") from None
    common.claim_result(args.name)
    device = str(resolve_device(None))
    record = {"task": {"n_per_w": args.n, "sampler": args.sampler, "grid": args.grid, "steps": args.steps,
                     "sigma_max": args.sigma_max, "w": ws},
              "models": {}}
    record["provenance"] = {}
    for source in args.models:
        try:
            net, config = load_model(source, device)
            record["provenance"][source] = model_provenance(source)
        except UsageError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(source, flush=True)
        record["models"][source] = fmnist_eval.evaluate_at(
            net, config, ws, max(args.n // 10, 1), ddim_steps=args.steps, device=device, sampler=args.sampler,
            grid=args.grid, sigma_max=args.sigma_max, batch_size=250,
            compile=False if args.no_compile else None)
        common.write_result(args.name, record)


if __name__ == "__main__":
    main()
