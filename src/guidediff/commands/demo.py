"""`guidediff demo`: the first thing to run. A list of demo steps, each writing into its own
sub-directory of --out and returning what it made; the 2-D toy comes first (more steps, such as
sampling Fashion-MNIST grids from a shipped model, append to DEMO_STEPS)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple


class DemoStep(NamedTuple):
    name: str
    title: str
    run: Callable[[Path], dict[str, Path]]  # out dir -> {what: path}


def toy_step(out: Path) -> dict[str, Path]:
    """Train the 2-D MLP briefly on gmm3 and compare it with the exact oracle at w ∈ {−1, 0, 1, 3}."""
    from guidediff.toy_run import format_table, run_toy

    result = run_toy(data="gmm3", w=(-1.0, 0.0, 1.0, 3.0), out=str(out), n=2000, steps=100, train_steps=3000)
    print(format_table(result.metrics["results"]))
    print("  (a) trained vs exact-score sampler; (b) exact-score sampler vs exact p(x|c)p(c|x)^w; (c) noise floor of (b)")
    return result.paths


DEMO_STEPS: list[DemoStep] = [
    DemoStep("toy", "2-D toy: classifier-free guidance on three Gaussians, against exact scores", toy_step),
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a first end-to-end run (about 2 minutes on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small tensors; 2+ helps only on an idle machine)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    import torch

    from guidediff.toy_run import prepare_out

    torch.set_num_threads(args.threads)
    root = prepare_out(args.out)
    made: list[tuple[str, str, Path]] = []
    start = time.time()
    for i, step in enumerate(DEMO_STEPS, 1):
        print(f"[{i}/{len(DEMO_STEPS)}] {step.title}")
        for what, path in step.run(root / step.name).items():
            made.append((step.name, what, path))
    print(f"\ndemo finished in {time.time() - start:.0f} s; it made:")
    for name, what, path in made:
        print(f"  {name:5s} {what:8s} {path}")
    return 0
