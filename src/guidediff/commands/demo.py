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
    from guidediff.toy.run import format_table, run_toy

    result = run_toy(data="gmm3", w=(-1.0, 0.0, 1.0, 3.0), out=str(out), n=2000, steps=100, train_steps=3000)
    print(format_table(result.metrics["results"]))
    print("  (a) trained vs exact-score sampler; (b) exact-score sampler vs exact p(x|c)p(c|x)^w; (c) noise floor of (b)")
    return result.paths


def fmnist_step(out: Path) -> dict[str, Path]:
    """Sample the shipped Fashion-MNIST model at w ∈ {0, 1, 3}: one grid per w, rows = classes."""
    import json
    import os

    import torch

    from guidediff.loading import load_model
    from guidediff.models import shipped_path
    from guidediff.generation import generate, save_samples

    # the UNet's convolutions, unlike the 2-D toy's tiny tensors, gain from every core
    torch.set_num_threads(max(torch.get_num_threads(), min(os.cpu_count() or 1, 4)))
    net, config = load_model("fmnist-cfg", "cpu")
    card = json.loads(shipped_path("fmnist-cfg").with_suffix(".json").read_text())
    print(f"  model fmnist-cfg: {card.get('step')} steps in {float(card.get('training_time_s', 0)) / 60:.1f} min "
          f"on {card.get('device', 'a GPU')}, commit {card.get('commit')}")
    for command in card.get("commands", []):
        print(f"    trained by: {command}")
    result = generate(net, config, list(range(config.model.num_classes)), [0.0, 1.0, 3.0], 2,
                      steps=20, seed=0, device="cpu", progress=True)
    written = save_samples(out, result, max_cols=2)
    print(f"  {len(result['x'])} images, {result['nfe_per_image']:.0f} network evaluations per image, "
          f"{result['seconds']:.0f} s")
    return {path.stem: path for path in written}


DEMO_STEPS: list[DemoStep] = [
    DemoStep("toy", "2-D toy: classifier-free guidance on three Gaussians, against exact scores", toy_step),
    DemoStep("fmnist", "Fashion-MNIST: the shipped model sampled at w = 0, 1, 3 (20 DDIM steps, CPU)", fmnist_step),
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a first end-to-end run: the 2-D toy and Fashion-MNIST grids (a few minutes on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace what an existing --out holds (it is refused otherwise)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small tensors; 2+ helps only on an idle machine)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    import torch

    from guidediff.commands._outputs import claim_out_dir
    from guidediff.errors import require

    require(args.threads >= 1, f"--threads must be >= 1, got {args.threads}")
    root = claim_out_dir(args.out, overwrite=args.overwrite)
    torch.set_num_threads(args.threads)
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
