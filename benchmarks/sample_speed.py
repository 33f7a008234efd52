"""CFG sampling throughput: guidediff's UNet + DDIM against diffusers' UNet2DModel + DDIMScheduler.

Same work on both sides: 50 DDIM steps, w = 3 (diffusers guidance_scale 4), cond and uncond in one
batched forward, equal parameter counts within 10%; at batch 256 (the top-level keys) and at
batch 2048 (``by_batch``). Ours also as one CUDA graph per trajectory (cuda_graphs.py, what
``generate(cuda_graph=True)`` runs), eager or over a compiled network. MFU: counted forward FLOPs
per row × network rows per image × images/s against 989 TFLOP/s (H200 dense bf16). The best
variant of each side is profiled (torch.profiler). Writes benchmarks/results/sample_speed.json (or
$BENCH_OUT/sample_speed.json); an earlier result there is refused before any work unless
BENCH_OVERWRITE=1. About 2 minutes on one H200.

    python benchmarks/sample_speed.py [--batch 256 2048] [--steps 50] [--repeats 3]
    python benchmarks/sample_speed.py --batch 4 --steps 2 --repeats 1 --skip-diffusers   # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers  # noqa: E402

from guidediff.cuda_graphs import TrajectoryGraphs  # noqa: E402
from guidediff.guidance import CountingDenoiser, cfg  # noqa: E402
from guidediff.nets.unet import UNet, UNetConfig, count_parameters  # noqa: E402
from guidediff.samplers import sample_ddim  # noqa: E402
from guidediff.schedules import CFGSchedule, lam_grid  # noqa: E402

BIG = 1024  # from this batch on, fp32 variants are left out (they only repeat what batch 256 shows)


def ours(batch: int, steps: int, w: float, repeats: int, compile_mode: str | None, bf16: bool, graph: bool = False):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = UNet(UNetConfig.fmnist()).to(device).eval()
    channels_last = device == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def raw(z, lam, c):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            return net(z, lam, c).float()

    fn = torch.compile(raw, mode=compile_mode, dynamic=False) if compile_mode else raw
    counter = CountingDenoiser(fn)
    lams = lam_grid(CFGSchedule(), steps, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    z0 = torch.randn(batch, 1, 28, 28, device=device, generator=gen)
    if channels_last:
        z0 = z0.contiguous(memory_format=torch.channels_last)
    c = torch.arange(batch, device=device) % 10
    wt = torch.full((batch,), w, device=device)

    def trajectory(z, c, wt):
        return sample_ddim(cfg(counter, wt, null_class=10), z, lams, c, clip_x=1.0)

    graphs = TrajectoryGraphs([counter]) if graph and device == "cuda" else None

    def run():
        with torch.inference_mode():
            if graphs is not None:
                return graphs.run(batch, trajectory, z0, c, wt)
            return trajectory(z0, c, wt)

    common.reset_peak()
    warmup = 2
    times = common.time_call(run, warmup=warmup, repeats=repeats)
    nfe = counter.evaluations / ((repeats + warmup) * batch)
    flops = common.forward_flops(lambda *a: net(*a), z0[:1].float(), lams[:1], c[:1])
    return {
        "images_per_s": batch / common.median(times),
        "seconds": times,
        "peak_memory_mib": common.peak_memory_mib(),
        "nfe_per_image": nfe,
        "params": count_parameters(net),
        "forward_gflops_per_image": flops / 1e9,
        "flops_per_image": flops * nfe,
    }, run


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
    t = scheduler.timesteps[0]
    flops = common.forward_flops(lambda: unet(x0[:1].to(dtype), t, class_labels=labels[:1]))
    return {
        "images_per_s": batch / common.median(times),
        "seconds": times,
        "peak_memory_mib": common.peak_memory_mib(),
        "nfe_per_image": 2 * steps,
        "forward_gflops_per_image": flops / 1e9,
        "flops_per_image": flops * 2 * steps,
        **info,
    }, run


def _attempt(rows: dict, runs: dict, name: str, fn, *args) -> None:
    """One variant; a failure is recorded in its row, and the others still run."""
    print(f"-- {name}", flush=True)
    try:
        rows[name], runs[name] = fn(*args)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}


def at_batch(batch: int, args, params: int | None) -> tuple[dict, dict]:
    on_gpu = torch.cuda.is_available()
    s, w = args.steps, args.w
    repeats = args.repeats if batch < BIG else max(1, args.repeats - 1)
    rows: dict[str, dict] = {}
    runs: dict = {}
    if batch < BIG or not on_gpu:
        _attempt(rows, runs, "ours_fp32_eager", ours, batch, s, w, repeats, None, False)
    if on_gpu:
        _attempt(rows, runs, "ours_bf16_eager", ours, batch, s, w, repeats, None, True)
        _attempt(rows, runs, "ours_bf16_compiled_cudagraphs", ours, batch, s, w, repeats, "reduce-overhead", True)
        _attempt(rows, runs, "ours_bf16_graphed", ours, batch, s, w, repeats, None, True, True)
        _attempt(rows, runs, "ours_bf16_compiled_graphed", ours, batch, s, w, repeats, "default", True, True)
    params = params or next((r["params"] for r in rows.values() if "params" in r), None)
    if not args.skip_diffusers:
        if batch < BIG or not on_gpu:
            _attempt(rows, runs, "diffusers_fp32", diffusers_side, batch, s, w, repeats, torch.float32, params)
        if on_gpu:
            _attempt(rows, runs, "diffusers_bf16", diffusers_side, batch, s, w, repeats, torch.bfloat16, params)
    print(f"== batch {batch}")
    summary = common.summarize(rows)
    summary["profiles"] = common.profile_best(rows, runs, f" (one trajectory of {batch})")
    return summary, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--w", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-diffusers", action="store_true")
    args = parser.parse_args()
    common.claim_result("sample_speed")  # before any work: an earlier result is replaced only when told
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    sharing_before = common.gpu_sharing()

    by_batch = {}
    for batch in args.batch:
        by_batch[str(batch)], _ = at_batch(batch, args, None)
        common.reset_peak()
    first = by_batch[str(args.batch[0])]
    common.write_result("sample_speed", {
        "task": {"batch": args.batch[0], "batches": args.batch, "steps": args.steps, "w": args.w, "sampler": "ddim",
                 "image": [1, 28, 28], "repeats": args.repeats},
        **first,
        "by_batch": {k: v for k, v in by_batch.items() if k != str(args.batch[0])},
        "mfu_peak_used": f"{common.PEAK_BF16_TFLOPS:g} TFLOP/s dense bf16 (H200 SXM datasheet)",
        "measured_bf16_matmul_tflops": common.matmul_tflops(),
        "gpu_sharing": {"before": sharing_before, "after": common.gpu_sharing()},
    })


if __name__ == "__main__":
    main()
