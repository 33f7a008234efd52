"""VDM ablation on Fashion-MNIST: fixed schedule vs learned schedule vs learned + Fourier features.

Each variant trains with the same budget (``--minutes`` of wall time and/or ``--steps``) through
the project's training loop (guidediff.vdm.training.train_vdm, as `guidediff train` does), then its EMA
weights are evaluated on the test set: bits/dim with a 95% interval and the three terms, for
log p(x|c) with the true labels and for the unconditional log p(x) (null token). Writes
benchmarks/results/vdm_ablation.json (or $BENCH_OUT/vdm_ablation.json) after every variant, so a
run cut short still leaves the finished ones, plus a bar chart and sample grids beside it. An
earlier vdm_ablation.json there is refused before any work unless BENCH_OVERWRITE=1.

Variants (the [vdm] table of --config, overridden):
  fixed            the CFG paper's schedule shape λ(u) = −2 log tan(a·u + b), on the learned
                   variants' initial range λ ∈ [−5, 13.3] (--fixed-range cfg: its own [−20, 20]);
                   in continuous time only the endpoints matter for the bound's value, so this
                   isolates what learning buys: endpoints and a lower-variance estimator.
  learned          VDM's monotone schedule network with variance minimisation, no Fourier features.
  learned_fourier  the same plus Fourier features n = 7, 8.

    # GPU, all three in one 10-minute call (≈ 3 × (2.5 min + ~15 s evaluation) + start-up):
    python benchmarks/vdm_ablation.py --minutes 2.5
    # CPU smoke test (tiny model, a few steps):
    python benchmarks/vdm_ablation.py --config configs/fmnist_vdm_tiny.toml --steps 3 --eval-n 64
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from guidediff.data.images import load_dataset, to_tensor_dataset  # noqa: E402
from guidediff.errors import UsageError  # noqa: E402
from guidediff.nets.unet import count_parameters  # noqa: E402
from guidediff.train import resolve_model_config  # noqa: E402
from guidediff.vdm import evaluate_bpd, load_vdm_run_config  # noqa: E402
from guidediff.vdm.loading import load_vdm  # noqa: E402
from guidediff.vdm.training import train_vdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("fixed", "learned", "learned_fourier")


def variant_vdm(name: str, base, fixed_range: str):
    """The VDMConfig of a variant, from the config's [vdm] table."""
    if name == "fixed":
        lo, hi = (-20.0, 20.0) if fixed_range == "cfg" else (base.lam_min, base.lam_max)
        return dataclasses.replace(base, schedule="cfg", lam_min=lo, lam_max=hi, fourier=False,
                                   variance_minimisation=False)
    if name == "learned":
        return dataclasses.replace(base, schedule="learned", fourier=False)
    if name == "learned_fourier":
        return dataclasses.replace(base, schedule="learned", fourier=True)
    raise SystemExit(f"error: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "fmnist_vdm.toml"))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override, e.g. train.lr=1e-4 or vdm.schedule_hidden=256; repeatable")
    p.add_argument("--minutes", type=float, default=None, help="training wall time per variant (set-up included)")
    p.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the config's, "
                                                           "or unlimited when --minutes is given)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--fixed-range", default="vdm", choices=["vdm", "cfg"],
                   help="range of the fixed schedule: the learned variants' initial one, or the CFG paper's ±20")
    p.add_argument("--eval-n", type=int, default=None, help="test images to evaluate (default: all 10k)")
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--no-null", action="store_true", help="skip the unconditional (null-token) evaluation")
    p.add_argument("--sample-steps", type=int, default=100, help="DDIM steps of the sample grids (0: none)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in the training loop")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's train.device)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default=None, help="run directories (default: runs/vdm_ablation)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    return p.parse_args(argv)


def train_curve(path: Path, points: int = 40) -> list[list[float]]:
    """[step, training bits/dim] pairs from the run's log.jsonl, thinned to about `points`."""
    import json

    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    stride = max(1, len(records) // points)
    picked = records[::stride] + ([records[-1]] if records and (len(records) - 1) % stride else [])
    return [[r["step"], r["loss"]] for r in picked]


def save_figure(path: Path, variants: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v["name"] for v in variants]
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(names), 3.6))
    bottom = [0.0] * len(names)
    for term, colour in (("diffusion", "#4c72b0"), ("reconstruction", "#dd8452"), ("prior", "#55a868")):
        vals = [v["terms"][term]["bpd"] for v in variants]
        ax.bar(names, vals, bottom=bottom, color=colour, label=term)
        bottom = [b + h for b, h in zip(bottom, vals)]
    ax.errorbar(names, [v["bpd"] for v in variants], yerr=[v["bpd_ci95"] for v in variants], fmt="none",
                ecolor="black", capsize=4)
    for i, v in enumerate(variants):
        ax.text(i, v["bpd"], f" {v['bpd']:.3f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("bits/dim (test, with labels)")
    ax.set_title("VDM ablation, Fashion-MNIST, equal training budget")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_grid(path: Path, model, steps: int, seed: int) -> None:
    from guidediff.data.images import to_uint8
    from guidediff.images import save_grid
    from guidediff.vdm.sample import sample_vdm

    k = max(model.num_classes, 1)
    c = torch.arange(k).repeat_interleave(8) if model.num_classes else torch.zeros(8, dtype=torch.long)
    rows = []
    for w in (0.0, 2.0) if model.num_classes else (0.0,):
        x = sample_vdm(model, c, w=w, steps=steps, seed=seed)
        rows.append(to_uint8(x))
    import numpy as np

    images = np.concatenate(rows)
    save_grid(path, images, len(images) // 8, 8)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    overrides = list(args.set)
    if args.device:
        overrides.append(f"train.device={args.device}")
    overrides.append(f"train.compile={'true' if args.compile else 'false'}")
    try:
        config, base_vdm = load_vdm_run_config(args.config, overrides)
    except UsageError as exc:
        raise SystemExit(f"error: {exc}") from None
    # before any work, on the device the config names (--device or --set train.device); every run
    # starts a new file (rewritten after each of its variants), so an earlier result is replaced
    # only when told
    device = "cpu" if config.train.device == "cpu" or not torch.cuda.is_available() else "cuda"
    out_dir = common.claim_result("vdm_ablation", device=common.device_name(device)).parent
    if args.steps is not None:
        config.train.steps = args.steps
    elif args.minutes is not None:
        config.train.steps = 10**9  # the time limit ends the run
    config.train.checkpoint_every = max(config.train.checkpoint_every, 10**9)  # only the final checkpoint
    time_limit = args.minutes * 60 if args.minutes else None
    runs = Path(args.runs or ROOT / "runs" / "vdm_ablation")

    t_start = time.time()
    d = config.data
    train_data = load_dataset(d.name, "train", data_dir=args.data_dir or d.data_dir, resolution=d.resolution,
                              channels=d.channels)
    test_data = load_dataset(d.name, "test", data_dir=args.data_dir or d.data_dir, resolution=d.resolution,
                             channels=d.channels)
    resolve_model_config(config, train_data)
    cuda = torch.cuda.is_available() and config.train.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    n_eval = args.eval_n or len(test_data.images)
    x_test, c_test = to_tensor_dataset(test_data.images[:n_eval], test_data.labels[:n_eval], device=device)
    null_class = config.model.num_classes

    settings = {
        "config": str(Path(args.config).name), "overrides": overrides, "minutes": args.minutes,
        "steps_limit": None if config.train.steps >= 10**9 else config.train.steps,
        "batch_size": config.train.batch_size, "lr": config.train.lr, "warmup_steps": config.train.warmup_steps,
        "ema_decay": config.train.ema_decay, "base_channels": config.model.base_channels,
        "dropout": config.model.dropout, "p_uncond": config.diffusion.p_uncond, "compile": args.compile,
        "eval_n": n_eval, "seed": config.train.seed, "fixed_range": args.fixed_range,
        "bound": "continuous time" if base_vdm.timesteps == 0 else f"T = {base_vdm.timesteps}",
    }
    payload = {"device": common.device_name(device), "settings": settings, "variants": [], "command": shlex.join(["python", *sys.argv])}
    print(f"VDM ablation on {device}: {', '.join(names)}; "
          f"{'%.2f min' % args.minutes if args.minutes else '%d steps' % config.train.steps} per variant", flush=True)

    for name in names:
        vdm = variant_vdm(name, base_vdm, args.fixed_range)
        cfg = dataclasses.replace(config, model=dataclasses.replace(config.model))
        run_dir = runs / name
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # a benchmark starts fresh: equal budgets
        began = common.sharing_began(device)
        result = train_vdm(cfg, run_dir, vdm, dataset=train_data, sample_fn=lambda *a: None,
                           time_limit_s=time_limit, progress=args.progress, command=payload["command"],
                           log=lambda msg: print(f"  [{name}] {msg}", flush=True))
        train_s = result.elapsed_s

        t_eval = time.time()
        model, _ = load_vdm(result.checkpoint, device=device, weights="ema")
        bpd = evaluate_bpd(model, x_test, c_test, batch_size=args.eval_batch, seed=0, condition="label")
        entry = {
            "name": name, "schedule": vdm.schedule, "fourier": vdm.fourier,
            "bpd": bpd.bpd, "bpd_ci95": bpd.bpd_ci95, "terms": bpd.terms,
            "steps": result.step, "gpu_minutes": train_s / 60 if cuda else None, "train_minutes": train_s / 60,
            "images_per_sec": result.images_per_sec, "final_train_bpd": result.final_loss,
            "lam_min": model.schedule.lam_min, "lam_max": model.schedule.lam_max,
            "params": count_parameters(model),
        }
        if null_class and not args.no_null:
            null = evaluate_bpd(model, x_test, c_test, batch_size=args.eval_batch, seed=0, condition="null")
            entry.update(bpd_null=null.bpd, bpd_null_ci95=null.bpd_ci95, terms_null=null.terms)
        if args.sample_steps:
            grid = out_dir / f"vdm_ablation_{name}.png"
            out_dir.mkdir(parents=True, exist_ok=True)
            sample_grid(grid, model, args.sample_steps, seed=0)
            entry["samples"] = grid.name
        entry["eval_seconds"] = time.time() - t_eval
        entry["train_log"] = train_curve(run_dir / "log.jsonl")
        entry["gpu_sharing"] = common.sharing_record(began, device)
        payload["variants"].append(entry)
        null_txt = f", null {entry['bpd_null']:.4f}" if "bpd_null" in entry else ""
        print(f"{name:16s} {entry['bpd']:.4f} ± {entry['bpd_ci95']:.4f} bits/dim{null_txt}  "
              f"(prior {bpd.terms['prior']['bpd']:.4f}, recon {bpd.terms['reconstruction']['bpd']:.4f}, "
              f"diffusion {bpd.terms['diffusion']['bpd']:.4f}; λ ∈ [{entry['lam_min']:.2f}, {entry['lam_max']:.2f}]; "
              f"{result.step} steps in {train_s / 60:.2f} min, eval {entry['eval_seconds']:.0f} s)", flush=True)
        payload["total_minutes"] = (time.time() - t_start) / 60
        common.write_result("vdm_ablation", payload, str(out_dir))
        save_figure(out_dir / "vdm_ablation.png", payload["variants"])
        del model
        if cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
