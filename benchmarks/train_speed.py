"""Training throughput: guidediff's training step (the one `guidediff train` runs) against diffusers'
UNet2DModel recipe.

Both sides: batch 128 of 28×28×1 images, ε-prediction MSE with 10% label dropout, AdamW, gradient
clipping at 1, an EMA update every step, equal parameter counts within 10%. Ours is
configs/fmnist_cfg.toml's model and step (train_step.TrainStep), so the two variants
``ours_bf16_compiled`` (train.cuda_graph=false) and ``ours_bf16_compiled_graphed`` (the default on a
GPU) are the images/s of that recipe without and with the CUDA-graphed step. diffusers: its usual
recipe (DDPMScheduler.add_noise, integer timesteps), in fp32 and bf16 autocast. MFU counts each
side's model FLOPs per image (forward + backward, FlopCounterMode) against 989 TFLOP/s (H200 dense
bf16). The best variant of each side is profiled (torch.profiler). Writes
benchmarks/results/train_speed.json (or $BENCH_OUT); an earlier result there is refused before any
work unless BENCH_OVERWRITE=1. About 2 minutes on one H200.

    python benchmarks/train_speed.py [--batch 128] [--steps 30]
    python benchmarks/train_speed.py --batch 8 --steps 2 --skip-diffusers   # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

from guidediff.config import load_config  # noqa: E402
from guidediff.ema import EMA  # noqa: E402
from guidediff.nets.unet import UNet, count_parameters  # noqa: E402
from guidediff.train import _Batches, _make_optimizer, cfg_loss, resolve_model_config  # noqa: E402
from guidediff.train_step import StepParts, TrainStep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE_STEPS = 5


class _FakeData:
    """Random Fashion-MNIST-shaped data: speed does not depend on the pixels."""

    def __init__(self, n: int = 4096):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        self.labels = rng.integers(0, 10, n).astype(np.int64)
        self.resolution, self.channels, self.num_classes = 28, 1, 10


def _accelerator(cuda: bool):
    from accelerate import Accelerator

    return Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)


def ours(batch: int, steps: int, repeats: int, *, mode: str, bf16: bool, compile_mode: str | None):
    """fmnist_cfg's step in one of train_step's modes; returns (row, run(steps) for the profiler)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = load_config(ROOT / "configs" / "fmnist_cfg.toml", [f"train.batch_size={batch}"])
    data = _FakeData(max(4096, 2 * batch))
    resolve_model_config(config, data)
    torch.manual_seed(0)
    net = UNet(config.model).to(device)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    optimizer, scheduler = _make_optimizer(config, net, cuda, capturable=cuda and mode != "classic")
    ema = EMA(net, config.train.ema_decay, config.train.ema_warmup)
    model = torch.compile(net, mode=compile_mode) if compile_mode else net
    images = torch.from_numpy(data.images).to(device)
    labels = torch.from_numpy(data.labels).to(device)
    parts = StepParts(model=model, net=net, optimizer=optimizer, scheduler=scheduler, loss_fn=cfg_loss(config),
                      batches=_Batches(images, labels, batch, 0, cuda), ema=ema, accelerator=_accelerator(cuda),
                      grad_clip=config.train.grad_clip, amp_dtype=torch.bfloat16 if bf16 else None,
                      hflip=config.data.hflip, seed=0, rank=0, world_size=1, global_batch=batch)
    step_fn = TrainStep(parts, mode)
    counter = [0]

    def run(n: int = steps):
        for _ in range(n):
            step_fn(counter[0])
            counter[0] += 1

    common.reset_peak()
    times = common.time_call(run, warmup=1, repeats=repeats)
    if step_fn.mode != mode:
        raise RuntimeError(f"the step fell back from {mode} to {step_fn.mode}")
    loss = float(step_fn.loss_sum) / counter[0]
    return {
        "images_per_s": batch * steps / common.median(times),
        "seconds_per_repeat": times,
        "peak_memory_mib": common.peak_memory_mib(),
        "params": count_parameters(net),
        "mean_loss": loss,
        "flops_per_image": _our_flops(config),
    }, (lambda: run(PROFILE_STEPS))


_FLOPS: dict[str, float] = {}


def _our_flops(config) -> float:
    """Model FLOPs of one training image: forward and backward of the UNet, counted at batch 4."""
    if "ours" in _FLOPS:
        return _FLOPS["ours"]
    net = UNet(config.model)
    loss_fn = cfg_loss(config)
    from guidediff.train_step import StepContext

    x = torch.zeros(4, 1, 28, 28)
    c = torch.zeros(4, dtype=torch.long)
    ctx = StepContext(0, torch.Generator().manual_seed(0), 0, 1, 4)
    _FLOPS["ours"] = common.counted_flops(lambda: loss_fn(net, x, c, ctx).backward()) / 4
    return _FLOPS["ours"]


def diffusers_side(batch: int, steps: int, repeats: int, bf16: bool, target_params: int):
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

    def loss_of(x, labels):
        noise = torch.randn(x.shape, device=device, generator=gen)
        t = torch.randint(0, 1000, (len(x),), device=device, generator=gen)
        drop = torch.rand(len(x), device=device, generator=gen) < 0.1
        cls = torch.where(drop, torch.full_like(labels, 10), labels)
        noisy = scheduler.add_noise(x, noise, t)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(noisy, t, class_labels=cls).sample
        return torch.nn.functional.mse_loss(pred.float(), noise)

    def step():
        loss_of(x, labels).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - 0.9999)

    def run(n: int = steps):
        for _ in range(n):
            step()

    common.reset_peak()
    times = common.time_call(run, warmup=1, repeats=repeats)
    flops = common.counted_flops(lambda: loss_of(x[:4], labels[:4]).backward()) / 4
    opt.zero_grad(set_to_none=True)
    return {"images_per_s": batch * steps / common.median(times), "seconds_per_repeat": times,
            "peak_memory_mib": common.peak_memory_mib(), "flops_per_image": flops, **info}, (lambda: run(PROFILE_STEPS))


SKIP: set[str] = set()  # variants left out with --skip


def _attempt(rows: dict, runs: dict, name: str, fn, *args, **kw) -> None:
    if name in SKIP:
        return
    """One variant; a failure is recorded in its row, and the others still run."""
    print(f"-- {name}", flush=True)
    try:
        rows[name], runs[name] = fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--max-autotune", action="store_true",
                        help="also the max-autotune-no-cudagraphs compiled graphed step (minutes of autotuning)")
    parser.add_argument("--skip", default="", help="comma list of variants to leave out (e.g. ours_bf16_reduce_overhead)")
    args = parser.parse_args()
    common.claim_result("train_speed")  # before any work: an earlier result is replaced only when told
    SKIP.update(filter(None, args.skip.split(",")))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    on_gpu = torch.cuda.is_available()
    sharing_before = common.gpu_sharing()

    b, n, r = args.batch, args.steps, args.repeats
    rows: dict[str, dict] = {}
    runs: dict = {}
    _attempt(rows, runs, "ours_fp32_eager", ours, b, n, r, mode="graph-ready", bf16=False, compile_mode=None)
    if on_gpu:
        # train.cuda_graph=false: the classic step of `guidediff train` (compiled model, Accelerate step)
        _attempt(rows, runs, "ours_bf16_compiled", ours, b, n, r, mode="classic", bf16=True, compile_mode="default")
        _attempt(rows, runs, "ours_bf16_graphed", ours, b, n, r, mode="graphed", bf16=True, compile_mode=None)
        # the default of `guidediff train` on a GPU: compiled model, whole step in one CUDA graph
        _attempt(rows, runs, "ours_bf16_compiled_graphed", ours, b, n, r, mode="graphed", bf16=True,
                 compile_mode="default")
        # the alternative: inductor's own CUDA graphs around forward+backward, the rest eager
        _attempt(rows, runs, "ours_bf16_reduce_overhead", ours, b, n, r, mode="graph-ready", bf16=True,
                 compile_mode="reduce-overhead")
        if args.max_autotune:
            _attempt(rows, runs, "ours_bf16_maxautotune_graphed", ours, b, n, r, mode="graphed", bf16=True,
                     compile_mode="max-autotune-no-cudagraphs")
    params = rows.get("ours_fp32_eager", {}).get("params") or count_parameters(UNet(load_config(ROOT / "configs" / "fmnist_cfg.toml").model))
    if not args.skip_diffusers:
        _attempt(rows, runs, "diffusers_fp32", diffusers_side, b, n, r, False, params)
        if on_gpu:
            _attempt(rows, runs, "diffusers_bf16", diffusers_side, b, n, r, True, params)

    profiles = common.profile_best(rows, runs, steps=PROFILE_STEPS)
    graphed, plain = rows.get("ours_bf16_compiled_graphed", {}), rows.get("ours_bf16_compiled", {})
    recipe = {"config": "configs/fmnist_cfg.toml",
              "images_per_s_without_graph": plain.get("images_per_s"),
              "images_per_s_with_graph": graphed.get("images_per_s")}
    print(f"fmnist_cfg recipe: {recipe['images_per_s_without_graph']} images/s without the graphed step, "
          f"{recipe['images_per_s_with_graph']} with it")
    common.report_against_peer(
        "train_speed", {"batch": b, "image": [1, 28, 28], "steps_per_repeat": n, "repeats": r}, rows,
        extra={"profiles": profiles, "fmnist_cfg_recipe": recipe,
               "gpu_sharing": {"before": sharing_before, "after": common.gpu_sharing()}})


if __name__ == "__main__":
    main()
