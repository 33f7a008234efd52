"""Training throughput: guidediff's UNet training step against diffusers' UNet2DModel recipe.

Both sides: batch 128 of 28×28×1 images, ε-prediction MSE with 10% label dropout, AdamW, an EMA
update every step, equal parameter counts within 10%. Ours: bf16 autocast, channels_last, fused
AdamW, torch.compile. diffusers: its usual recipe (DDPMScheduler.add_noise, integer timesteps), in
fp32 and in bf16 autocast. Writes benchmarks/results/train_speed.json (or $BENCH_OUT).

    python benchmarks/train_speed.py [--batch 128] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

from guidediff.losses import draw_noise, eps_loss  # noqa: E402
from guidediff.nets.unet import UNet, UNetConfig, count_parameters  # noqa: E402
from guidediff.schedules import CFGSchedule  # noqa: E402


def _ema_update(ema_params, params, decay=0.9999):
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def ours(batch: int, steps: int, bf16: bool, compile_model: bool):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = UNet(UNetConfig.fmnist(dropout=0.1)).to(device)
    if device == "cuda":
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if compile_model else net
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=device == "cuda")
    ema = [p.detach().clone() for p in net.parameters()]
    params = list(net.parameters())
    schedule = CFGSchedule()
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, device=device, generator=gen) * 2 - 1
    c = torch.randint(0, 10, (batch,), device=device, generator=gen)

    def step():
        noise = draw_noise(batch, (1, 28, 28), p_uncond=0.1, generator=gen, device=device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = eps_loss(model, x, c, schedule, noise, null_class=10)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _ema_update(ema, [p.detach() for p in params])

    def run():
        for _ in range(steps):
            step()

    common.reset_peak()
    times = common.time_call(run, warmup=1, repeats=3)
    flops = common.forward_flops(lambda *a: net(*a), x[:1], torch.zeros(1, device=device), c[:1]) if device == "cuda" else None
    return {
        "images_per_s": batch * steps / common.median(times),
        "peak_memory_mib": common.peak_memory_mib(),
        "params": count_parameters(net),
        "forward_gflops_per_image": flops / 1e9 if flops else None,
    }


def diffusers_side(batch: int, steps: int, bf16: bool, target_params: int):
    from diffusers import DDPMScheduler

    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet, info = peers.diffusers_unet(target_params)
    unet = unet.to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-4)
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, device=device, generator=gen) * 2 - 1
    labels = torch.randint(0, 10, (batch,), device=device, generator=gen)

    def step():
        noise = torch.randn(x.shape, device=device, generator=gen)
        t = torch.randint(0, 1000, (batch,), device=device, generator=gen)
        drop = torch.rand(batch, device=device, generator=gen) < 0.1
        cls = torch.where(drop, torch.full_like(labels, 10), labels)
        noisy = scheduler.add_noise(x, noise, t)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(noisy, t, class_labels=cls).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _ema_update(ema, [p.detach() for p in params])

    def run():
        for _ in range(steps):
            step()

    common.reset_peak()
    times = common.time_call(run, warmup=1, repeats=3)
    return {"images_per_s": batch * steps / common.median(times), "peak_memory_mib": common.peak_memory_mib(), **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed repeat")
    parser.add_argument("--skip-diffusers", action="store_true")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    on_gpu = torch.cuda.is_available()

    rows = {"ours_fp32_eager": ours(args.batch, args.steps, bf16=False, compile_model=False)}
    if on_gpu:
        rows["ours_bf16_compiled"] = ours(args.batch, args.steps, bf16=True, compile_model=True)
    params = rows["ours_fp32_eager"]["params"]
    if not args.skip_diffusers:
        rows["diffusers_fp32"] = diffusers_side(args.batch, args.steps, False, params)
        if on_gpu:
            rows["diffusers_bf16"] = diffusers_side(args.batch, args.steps, True, params)

    # a training step costs about 3 forwards (forward + backward through activations and weights)
    common.report_against_peer(
        "train_speed", {"batch": args.batch, "image": [1, 28, 28], "steps_per_repeat": args.steps},
        rows, forwards_per_image=3, forward_gflops=rows["ours_fp32_eager"]["forward_gflops_per_image"])


if __name__ == "__main__":
    main()
