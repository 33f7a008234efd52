"""DDGAN training-step speed: steps/s and images/s of `guidediff train-ddgan`'s step on Fashion-MNIST
(configs/ddgan_fmnist.toml's networks, T = 4, batch 256, bf16 on a GPU) in its step modes:

- classic            train.cuda_graph=false (the step before the graphs), R1 every step
- classic_compiled   the same with train.compile=true (G and D compiled; the R1 pass stays eager)
- classic_r1every4   the classic step with lazy R1 (train.r1_every=4)
- graphed            train.cuda_graph=true, R1 every step (one captured graph)
- graphed_r1every4   train.cuda_graph=true with train.r1_every=4 (two captured graphs)

Each variant builds fresh networks (ddgan.train.build_training) and runs ddgan.step.DDGANStep; the
warm-up steps (compilation, cuDNN autotuning, the eager runs and the capture of each step variant)
are excluded; then the median of --windows windows of --window-steps steps (a multiple of r1_every,
so each window holds the same share of R1 steps), synchronised. Peak memory is the variant's own
(torch.cuda.max_memory_allocated). The images are random uint8 of Fashion-MNIST's shape: the step's
cost does not depend on the pixels. Writes benchmarks/results/ddgan_speed.json (or --out DIR /
$BENCH_OUT). About 5 minutes on one H200.

    PYTHONPATH=src python3 benchmarks/ddgan_speed.py [--batch 256] [--windows 5] [--window-steps 20]
    PYTHONPATH=src python3 benchmarks/ddgan_speed.py --tiny      # CPU smoke run: tiny nets, few steps
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from guidediff.ddgan.config import load_config  # noqa: E402
from guidediff.ddgan.schedule import DiscreteVP  # noqa: E402
from guidediff.ddgan.step import DDGANStep, choose_step_mode  # noqa: E402
from guidediff.ddgan.train import TrainingData, build_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# name: overrides of configs/ddgan_fmnist.toml
VARIANTS = {
    "classic": ["train.cuda_graph=false", "train.r1_every=1"],
    "classic_compiled": ["train.cuda_graph=false", "train.compile=true", "train.r1_every=1"],
    "classic_r1every4": ["train.cuda_graph=false", "train.r1_every=4"],
    "graphed": ["train.cuda_graph=true", "train.r1_every=1"],
    "graphed_r1every4": ["train.cuda_graph=true", "train.r1_every=4"],
}
TINY_NETS = ["generator.base_channels=16", "generator.channel_mult=[1, 2]", "generator.num_res_blocks=1",
             "generator.attention_resolutions=[14]", "generator.nz=8", "discriminator.base_channels=8",
             "discriminator.channel_mult=[1, 2]"]


def fake_data(n: int, device: torch.device) -> TrainingData:
    """Random images of Fashion-MNIST's shape and labels: the step's cost does not depend on them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 28, 28, 1), generator=g, dtype=torch.uint8)
    return TrainingData(x.to(device), torch.randint(0, 10, (n,), generator=g).to(device), 10, (1, 28, 28))


def measure(overrides: list[str], data: TrainingData, device: torch.device, windows: int, window_steps: int,
            warmup: int | None) -> dict:
    """One variant: build, warm up (untimed), then `windows` timed windows of `window_steps` steps."""
    config = load_config(None, ROOT / "configs" / "ddgan_fmnist.toml", overrides)
    t = config.train
    cuda = device.type == "cuda"
    k = t.r1_every
    # each step variant gets its two eager runs and its capture inside the warm-up
    warmup = warmup if warmup is not None else max(10, 3 * k)
    warmup = -(-warmup // k) * k
    window_steps = -(-window_steps // k) * k
    mode = choose_step_mode(config, cuda)
    common.reset_peak()
    nets, ema = build_training(config, data, device, capturable=cuda and mode != "classic")
    lams = DiscreteVP.of(config.diffusion).lams(device=device)
    step_fn = DDGANStep(nets, ema, data, lams, config, mode=mode, bf16=cuda, sync_each_step=False)
    step = 0
    start = time.perf_counter()
    for _ in range(warmup):
        step_fn(step)
        step += 1
    common.sync()
    warmup_s = time.perf_counter() - start
    step_fn.take_window()
    rates = []
    for _ in range(windows):
        common.sync()
        start = time.perf_counter()
        for _ in range(window_steps):
            step_fn(step)
            step += 1
        common.sync()
        rates.append(window_steps / (time.perf_counter() - start))
    losses = step_fn.take_window()
    steps_per_s = statistics.median(rates)
    row = {"mode": step_fn.mode, "captured": step_fn.captured, "r1_every": k, "compile": t.compile,
           "batch": t.batch_size, "T": config.diffusion.T, "steps_per_s": steps_per_s,
           "images_per_s": steps_per_s * t.batch_size, "window_steps_per_s": rates, "window_steps": window_steps,
           "warmup_steps": warmup, "warmup_s": warmup_s, "peak_memory_mib": common.peak_memory_mib(),
           "loss_d": losses.get("loss_d"), "loss_g": losses.get("loss_g"),
           "finite": int(step_fn.first_bad) < 0}
    del step_fn, nets, ema
    gc.collect()
    if t.compile:
        torch._dynamo.reset()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--windows", type=int, default=5, help="timed windows per variant (the median is reported)")
    parser.add_argument("--window-steps", type=int, default=20, help="steps per window (rounded up to r1_every)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default max(10, 3·r1_every))")
    parser.add_argument("--variants", default=None, help=f"comma list out of {', '.join(VARIANTS)} (default all; "
                        "--tiny: all but classic_compiled)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, batch 4, few steps: a CPU smoke run")
    parser.add_argument("--out", default=None, help="directory for ddgan_speed.json (default benchmarks/results, "
                        "or $BENCH_OUT; --tiny: a temporary directory)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    names = args.variants.split(",") if args.variants else [v for v in VARIANTS if not (args.tiny and "compiled" in v)]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    out = args.out or os.environ.get("BENCH_OUT") or (tempfile.mkdtemp(prefix="ddgan_speed_") if args.tiny else None)
    common.claim_result("ddgan_speed", out)
    batch = 4 if args.tiny else args.batch
    windows, window_steps = (2, 2) if args.tiny else (args.windows, args.window_steps)
    warmup = 2 if args.tiny and args.warmup is None else args.warmup
    base = [f"train.batch_size={batch}"] + (TINY_NETS if args.tiny else [])
    data = fake_data(max(4096, 4 * batch) if not args.tiny else 64, device)
    sharing_before = common.gpu_sharing()

    rows: dict[str, dict] = {}
    for name in names:
        try:
            rows[name] = measure(base + VARIANTS[name], data, device, windows, window_steps, warmup)
        except Exception as exc:  # noqa: BLE001 - one variant's failure must not lose the others
            traceback.print_exc()
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}

    print(f"\nDDGAN training step, Fashion-MNIST shape, T = 4, batch {batch}, on {common.environment()['device']}")
    print(f"{'variant':<20}{'mode':<13}{'steps/s':>9}{'images/s':>10}{'peak MiB':>10}  captured")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<20}error: {row['error'][:100]}")
            continue
        peak = f"{row['peak_memory_mib']:.0f}" if row["peak_memory_mib"] is not None else "-"
        print(f"{name:<20}{row['mode']:<13}{row['steps_per_s']:>9.2f}{row['images_per_s']:>10.0f}{peak:>10}  "
              f"{row['captured'] or '-'}")
    ok = {k: v for k, v in rows.items() if "error" not in v}
    ratios = {f"{a}/classic": ok[a]["steps_per_s"] / ok["classic"]["steps_per_s"]
              for a in ok if "classic" in ok and a != "classic"}
    for key, value in ratios.items():
        print(f"  {key}: {value:.2f}x")
    sharing = {"before": sharing_before, "after": common.gpu_sharing()}
    note = (("the GPU to itself during the run" if sharing_before.get("alone") and sharing["after"].get("alone")
             else "the GPU was SHARED (other processes or memory seen before or after): speeds may be low")
            if cuda else "CPU smoke run (tiny nets): the numbers say nothing about GPU speed")
    networks = load_config(None, ROOT / "configs" / "ddgan_fmnist.toml", base).to_dict()
    payload = {"benchmark": "ddgan_speed", "tiny": args.tiny, "config": "configs/ddgan_fmnist.toml",
               "networks": {k: networks[k] for k in ("generator", "discriminator")},
               "batch": batch, "T": 4, "data": "random uint8 images of Fashion-MNIST's shape (speed does not "
               "depend on the pixels)", "windows": windows, "rows": rows, "ratios": ratios,
               "gpu_sharing": sharing, "note": note}
    common.write_result("ddgan_speed", payload, out)


if __name__ == "__main__":
    main()
