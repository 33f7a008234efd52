"""Several Fashion-MNIST model files scored side by side with the same seeds, sampler and sample
count: FID-FMNIST, CAS, precision/recall at a few guidance weights. Small enough for a CPU when a
GPU is not at hand (then read the FIDs only against each other: few samples bias FID upwards).

    python benchmarks/model_check.py runs/a.safetensors fmnist-cfg --w 0,0.3 --n 500 \\
        --sampler dpmpp-2m --grid lambda --steps 10 --name model_check_cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fmnist_eval  # noqa: E402

from guidediff.checkpoint import load_model  # noqa: E402
from guidediff.generation import generate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model files, run dirs or shipped names")
    p.add_argument("--w", default="0,0.3")
    p.add_argument("--n", type=int, default=500, help="samples per w (split over the 10 classes)")
    p.add_argument("--sampler", default="dpmpp-2m")
    p.add_argument("--grid", default="lambda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--name", default="model_check")
    args = p.parse_args()
    device = fmnist_eval.device_name()
    ws = [float(v) for v in args.w.split(",")]
    record = {"task": {"n_per_w": args.n, "sampler": args.sampler, "grid": args.grid, "steps": args.steps, "w": ws},
              "models": {}}
    for source in args.models:
        net, config = load_model(source, device)
        rows = []
        for w in ws:
            t0 = time.perf_counter()
            out = generate(net, config, list(range(10)), [w], max(args.n // 10, 1), sampler=args.sampler,
                           steps=args.steps, grid=args.grid, device=device, batch_size=250, progress=False)
            rows.append({"w": w, **fmnist_eval.metrics(out["x"], out["y"], device),
                         "seconds": time.perf_counter() - t0})
            print(f"{source}  w={w:g}  FID {rows[-1]['fid']:.4f}  CAS {rows[-1]['cas']:.4f}", flush=True)
        record["models"][source] = rows
        common.write_result(args.name, record)


if __name__ == "__main__":
    main()
