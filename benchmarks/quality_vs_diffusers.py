"""Quality at equal cost: our reference recipe (configs/fmnist_cfg.toml) against diffusers'
UNet2DModel CFG recipe (DDPM ε-loss, 10% label dropout, EMA, DDIM 50), each trained for the same
wall-clock minutes on the same GPU, then FID-FMNIST and CAS at w = 0, 1, 3 for both.
Writes benchmarks/results/quality_vs_diffusers.json (or $BENCH_OUT).

    python benchmarks/quality_vs_diffusers.py --minutes 6 --n 5000

The two sides can run as two processes (``--side ours`` / ``--side diffusers``, each writing
quality_vs_diffusers_<side>.json) and be joined with ``--merge OURS.json DIFFUSERS.json --layout
"..."``; the layout (e.g. each side alone on its own GPU) is recorded as given, so say it truthfully.
An output that already holds an earlier result is refused before any work unless BENCH_OVERWRITE=1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

from guidediff.loading import load_model  # noqa: E402
from guidediff.config import load_config  # noqa: E402
from guidediff.data.fmnist import load_fmnist  # noqa: E402
from guidediff.metrics.evaluate import evaluate_samples  # noqa: E402
from guidediff.nets.unet import count_parameters  # noqa: E402
from guidediff.generation import generate, initial_noise  # noqa: E402
from guidediff.sweep import flatten_metrics  # noqa: E402
from guidediff.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _metrics(images, labels, device) -> dict:
    m = flatten_metrics(evaluate_samples(images, labels, device=device))
    return {k: m[k] for k in ("fid", "fid_floor", "is", "cas", "precision", "recall", "n")}


def ours(minutes: float, ws: list[float], per_class: int, steps: int, runs: Path, device: str) -> dict:
    config = load_config(ROOT / "configs" / "fmnist_cfg.toml", ["train.sample_every=100000000"])
    result = train(config, runs / "ours", time_limit_s=minutes * 60, progress=False)
    net, config = load_model(runs / "ours", device)
    points = []
    for w in ws:
        out = generate(net, config, list(range(10)), [w], per_class, steps=steps, seed=0, device=device,
                       batch_size=1000, progress=False)
        points.append({"w": w, **_metrics(out["x"], out["y"], device), "sec_per_image": out["seconds"] / len(out["x"])})
    return {"steps": result.step, "train_minutes": result.elapsed_s / 60, "points": points,
            "params": count_parameters(net)}


def diffusers_train(minutes: float, device: str, params: int, on_step=None):
    """diffusers' default CFG recipe for ``minutes`` of wall clock: DDPM cosine ε-loss, 10% label
    dropout, AdamW 2e-4, EMAModel (warm-up, power 0.75). ``on_step(step, seconds, unet, ema)`` runs
    after every step (snapshots). Returns (unet with the EMA weights, steps, minutes)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    images, labels = load_fmnist("train")
    x_all = torch.from_numpy(images.copy()).to(device).float().div(127.5).sub(1).unsqueeze(1)
    y_all = torch.from_numpy(labels.copy()).to(device)
    unet, info = peers.diffusers_unet(params)
    unet = unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-4)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75)
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator(device=device).manual_seed(0)
    cuda = device == "cuda"
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < minutes * 60:
        idx = torch.randint(0, len(x_all), (128,), device=device, generator=gen)
        x, y = x_all[idx], y_all[idx]
        noise = torch.randn(x.shape, device=device, generator=gen)
        t = torch.randint(0, 1000, (128,), device=device, generator=gen)
        y = torch.where(torch.rand(128, device=device, generator=gen) < 0.1, torch.full_like(y, 10), y)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            pred = unet(ddpm.add_noise(x, noise, t), t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        step += 1
        if on_step is not None:
            on_step(step, time.perf_counter() - start, unet, ema)
    train_minutes = (time.perf_counter() - start) / 60
    ema.copy_to(unet.parameters())
    return unet.eval(), step, train_minutes, info


def ddim_scheduler(steps: int | None = None):
    """diffusers' DDIM for the trained DDPM schedule. clip_sample=False: the DDPM-config default
    (True) clips x0 against the guided ε."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    if steps is not None:
        ddim.set_timesteps(steps)
    return ddim


def diffusers_points(unet, ddim, ws: list[float], per_class: int, device: str) -> list[dict]:
    """FID-FMNIST, CAS, ... of per_class × 10 samples at each w (guidance_scale = 1 + w)."""
    cuda = device == "cuda"
    points = []
    for w in ws:
        items = [(c, i) for c in range(10) for i in range(per_class)]
        xs, t0 = [], time.perf_counter()
        for lo in range(0, len(items), 1000):
            chunk = items[lo:lo + 1000]
            z = initial_noise(0, chunk, (1, 28, 28)).to(device)
            c = torch.tensor([c for c, _ in chunk], device=device)
            with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
                out = peers.diffusers_cfg_sample(unet, ddim, z, c, 10, 1.0 + w, torch.float32)
            xs.append(((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
        if cuda:
            torch.cuda.synchronize()
        images = torch.cat(xs).numpy()
        labels = torch.tensor([c for c, _ in items]).numpy()
        points.append({"w": w, **_metrics(images, labels, device),
                       "sec_per_image": (time.perf_counter() - t0) / len(items)})
    return points


def diffusers_side(minutes: float, ws: list[float], per_class: int, steps: int, device: str, params: int) -> dict:
    unet, step, train_minutes, info = diffusers_train(minutes, device, params)
    points = diffusers_points(unet, ddim_scheduler(steps), ws, per_class, device)
    return {"steps": step, "train_minutes": train_minutes, "points": points, **info}


def compare(result: dict) -> dict:
    """Add the verdict (ours better FID and at least equal CAS at every w) and print the table."""
    result["ours_better_at_every_w"] = all(
        o["fid"] < d["fid"] and o["cas"] >= d["cas"]
        for o, d in zip(result["ours"]["points"], result["diffusers"]["points"]))
    print(f"{'w':>4s} {'ours FID':>9s} {'diffusers FID':>14s} {'ours CAS':>9s} {'diffusers CAS':>14s}")
    for o, d in zip(result["ours"]["points"], result["diffusers"]["points"]):
        print(f"{o['w']:4g} {o['fid']:9.3f} {d['fid']:14.3f} {o['cas']:9.3f} {d['cas']:14.3f}")
    print(f"floor {result['ours']['points'][0]['fid_floor']:.3f}; ours {result['ours']['steps']} steps, "
          f"diffusers {result['diffusers']['steps']} steps in {result['task']['minutes']} min each")
    return result


def merge(paths: list[str], layout: str) -> dict:
    parts = [json.loads(Path(p).read_text()) for p in paths]
    sides = {side: part[side] for part in parts for side in ("ours", "diffusers") if side in part}
    if set(sides) != {"ours", "diffusers"}:
        raise SystemExit(f"--merge needs one file with 'ours' and one with 'diffusers'; got {sorted(sides)}")
    first = parts[0]
    return compare({**{k: v for k, v in first.items() if k not in ("ours", "diffusers")},
                    "sides_run": layout, **sides})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training wall time per side")
    parser.add_argument("--n", type=int, default=5000, help="samples per w (split over the 10 classes)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--w", default="0,1,3")
    parser.add_argument("--runs", default="runs/quality_vs_diffusers")
    parser.add_argument("--side", choices=["both", "ours", "diffusers"], default="both",
                        help="train and evaluate one side only (run the two as two processes)")
    parser.add_argument("--params", type=int, default=7_992_961,
                        help="with --side diffusers: parameter count to match (ours: UNetConfig.fmnist())")
    parser.add_argument("--merge", nargs=2, default=None, metavar="JSON", help="only join two one-side results")
    parser.add_argument("--layout", default=None,
                        help="with --merge: how the sides ran, recorded as sides_run (e.g. 'each side alone on its own "
                             "H200 of a 2-GPU machine, at the same time'); required, say it truthfully")
    args = parser.parse_args()
    if args.merge:
        if not args.layout:
            parser.error("--merge needs --layout: how the two sides shared (or did not share) the GPUs")
        # before anything is written, checked against the device the sides were measured on
        for path in args.merge:
            try:
                json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise SystemExit(f"error: --merge {path} is not a readable side result ({exc.__class__.__name__}); "
                                 "pass the quality_vs_diffusers_<side>.json files of the two sides") from None
        first = json.loads(Path(args.merge[0]).read_text())
        common.claim_result("quality_vs_diffusers", device=first.get("device"))
        result = merge(args.merge, args.layout)
        # the sides' own device, torch and commit (first file) win over this machine's
        common.write_result("quality_vs_diffusers", result)
        return
    # before any training: an earlier result of this output is replaced only when told
    common.claim_result("quality_vs_diffusers" if args.side == "both" else f"quality_vs_diffusers_{args.side}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ws = [float(v) for v in args.w.split(",")]
    per_class = max(args.n // 10, 1)
    result = {"task": {"minutes": args.minutes, "n_per_w": per_class * 10, "ddim_steps": args.steps, "w": ws}}
    # each side records who else was on the GPU when it began and ended (its minutes are compared)
    if args.side in ("both", "ours"):
        began = common.sharing_began(device)
        result["ours"] = ours(args.minutes, ws, per_class, args.steps, Path(args.runs), device)
        result["ours"]["gpu_sharing"] = common.sharing_record(began, device)
    if args.side in ("both", "diffusers"):
        params = result["ours"]["params"] if "ours" in result else args.params
        began = common.sharing_began(device)
        result["diffusers"] = diffusers_side(args.minutes, ws, per_class, args.steps, device, params)
        result["diffusers"]["gpu_sharing"] = common.sharing_record(began, device)
    if args.side != "both":
        common.write_result(f"quality_vs_diffusers_{args.side}", result)
        return
    result["sides_run"] = "one after the other"
    compare(result)
    common.write_result("quality_vs_diffusers", result)


if __name__ == "__main__":
    main()
