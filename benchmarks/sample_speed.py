"""CFG sampling throughput: guidediff's UNet + DDIM against diffusers' UNet2DModel + DDIMScheduler.

Same work on both sides: batch 256, 50 DDIM steps, w = 3 (diffusers guidance_scale 4), cond and
uncond in one batched forward, equal parameter counts within 10%. Prints a table and writes
benchmarks/results/sample_speed.json (or $BENCH_OUT/sample_speed.json).

    python benchmarks/sample_speed.py [--batch 256] [--steps 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

from guidediff.guidance import CountingDenoiser, cfg  # noqa: E402
from guidediff.nets.unet import UNet, UNetConfig, count_parameters  # noqa: E402
from guidediff.samplers import sample_ddim  # noqa: E402
from guidediff.schedules import CFGSchedule, lam_grid  # noqa: E402


def ours(batch: int, steps: int, w: float, repeats: int, compile_mode: str | None, bf16: bool):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = UNet(UNetConfig.fmnist()).to(device).eval()
    channels_last = device == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def raw(z, lam, c):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            return net(z, lam, c).float()

    fn = torch.compile(raw, mode=compile_mode) if compile_mode else raw
    counter = CountingDenoiser(fn)
    denoiser = cfg(counter, w, null_class=10)
    lams = lam_grid(CFGSchedule(), steps, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    z0 = torch.randn(batch, 1, 28, 28, device=device, generator=gen)
    if channels_last:
        z0 = z0.contiguous(memory_format=torch.channels_last)
    c = torch.arange(batch, device=device) % 10

    def run():
        with torch.inference_mode():
            return sample_ddim(denoiser, z0, lams, c, clip_x=1.0)

    common.reset_peak()
    times = common.time_call(run, warmup=2, repeats=repeats)
    nfe = counter.evaluations / ((repeats + 2) * batch)
    flops = common.forward_flops(lambda *a: net(*a), z0[:1].float(), lams[:1], c[:1]) if device == "cuda" else None
    return {
        "images_per_s": batch / common.median(times),
        "seconds": times,
        "peak_memory_mib": common.peak_memory_mib(),
        "nfe_per_image": nfe,
        "params": count_parameters(net),
        "forward_gflops_per_image": flops / 1e9 if flops else None,
    }


def diffusers_side(batch: int, steps: int, w: float, repeats: int, dtype, target_params: int):
    from diffusers import DDIMScheduler

    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet, info = peers.diffusers_unet(target_params)
    unet = unet.to(device=device, dtype=dtype).eval()
    # clip_sample=False: the DDPM-config default (True) clips x0 and ruins CFG samples.
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    scheduler.set_timesteps(steps)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, 1, 28, 28, device=device, generator=gen)
    labels = torch.arange(batch, device=device) % 10

    def run():
        with torch.inference_mode():
            return peers.diffusers_cfg_sample(unet, scheduler, x0, labels, 10, 1.0 + w, dtype)

    common.reset_peak()
    times = common.time_call(run, warmup=1, repeats=repeats)
    return {
        "images_per_s": batch / common.median(times),
        "seconds": times,
        "peak_memory_mib": common.peak_memory_mib(),
        "nfe_per_image": 2 * steps,
        **info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--w", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-diffusers", action="store_true")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    rows = {}
    on_gpu = torch.cuda.is_available()
    rows["ours_fp32_eager"] = ours(args.batch, args.steps, args.w, args.repeats, None, bf16=False)
    if on_gpu:
        rows["ours_bf16_eager"] = ours(args.batch, args.steps, args.w, args.repeats, None, bf16=True)
        rows["ours_bf16_compiled_cudagraphs"] = ours(args.batch, args.steps, args.w, args.repeats, "reduce-overhead", bf16=True)
    params = rows["ours_fp32_eager"]["params"]
    if not args.skip_diffusers:
        rows["diffusers_fp32"] = diffusers_side(args.batch, args.steps, args.w, args.repeats, torch.float32, params)
        if on_gpu:
            rows["diffusers_bf16"] = diffusers_side(args.batch, args.steps, args.w, args.repeats, torch.bfloat16, params)

    flops = rows["ours_fp32_eager"]["forward_gflops_per_image"] or rows.get("ours_bf16_eager", {}).get("forward_gflops_per_image")
    best = max(rows.items(), key=lambda kv: kv[1]["images_per_s"] if kv[0].startswith("ours") else -1)[1]
    common.report_against_peer(
        "sample_speed",
        {"batch": args.batch, "steps": args.steps, "w": args.w, "sampler": "ddim", "image": [1, 28, 28]},
        rows, forwards_per_image=best["nfe_per_image"], forward_gflops=flops)


if __name__ == "__main__":
    main()
