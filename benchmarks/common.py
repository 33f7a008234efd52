"""Shared helpers for benchmarks: environment record, CUDA-event timing, JSON output."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    """The source commit; $GUIDEDIFF_COMMIT wins (device copies carry a stale .git)."""
    from guidediff.checkpoint import git_commit

    return git_commit() or "unknown"


def environment() -> dict:
    info = {"torch": torch.__version__, "commit": commit(), "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(fn, *, warmup: int = 2, repeats: int = 5) -> list[float]:
    """Seconds per call of fn(), measured with a synchronised wall clock after warm-up."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float | None:
    """Measured bf16 dense matmul rate on this GPU (the practical ceiling for MFU)."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    times = time_call(lambda: a @ b, warmup=3, repeats=repeats)
    return 2 * size**3 / median(times) / 1e12


def forward_flops(module, *args) -> int:
    """FLOPs of one forward pass, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops()


def peak_memory_mib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def write_result(name: str, payload: dict, out_dir: str | None = None) -> Path:
    """Write benchmarks/results/<name>.json (or into $OUT when set) and return the path."""
    target = Path(out_dir or os.environ.get("BENCH_OUT") or RESULTS)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.json"
    path.write_text(json.dumps({**environment(), **payload}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def report_against_peer(name: str, task: dict, rows: dict[str, dict], forwards_per_image: float,
                        forward_gflops: float | None) -> None:
    """Print the variant table, ours-best / diffusers-best and model FLOP utilisation, and write
    benchmarks/results/<name>.json. Rows named 'ours_*' and 'diffusers_*' are compared; an image
    costs ``forwards_per_image`` forward passes of ``forward_gflops`` each."""
    ours_best = max((v["images_per_s"], k) for k, v in rows.items() if k.startswith("ours"))
    peer = [(v["images_per_s"], k) for k, v in rows.items() if k.startswith("diffusers")]
    peer_best = max(peer) if peer else None
    ratio = ours_best[0] / peer_best[0] if peer_best else None
    peak = matmul_tflops()
    mfu = None
    if peak and forward_gflops:
        achieved = ours_best[0] * forwards_per_image * forward_gflops * 1e9 / 1e12
        mfu = {"achieved_tflops": achieved, "measured_bf16_matmul_tflops": peak, "mfu_vs_measured_matmul": achieved / peak}
    width = max(len(k) for k in rows) + 2
    print(f"{'variant':{width}s} {'images/s':>10s} {'peak MiB':>10s}")
    for variant, row in rows.items():
        mem = row["peak_memory_mib"]
        print(f"{variant:{width}s} {row['images_per_s']:10.1f} {'-' if mem is None else str(round(mem)):>10}")
    if ratio:
        print(f"ours best ({ours_best[1]}) / diffusers best ({peer_best[1]}): {ratio:.2f}x")
    if mfu:
        print(f"model FLOP utilisation: {mfu['achieved_tflops']:.1f} TFLOP/s = "
              f"{100 * mfu['mfu_vs_measured_matmul']:.1f}% of measured bf16 matmul")
    write_result(name, {
        "task": task,
        "variants": rows,
        "ours_images_per_s": ours_best[0],
        "ours_best_variant": ours_best[1],
        "diffusers_images_per_s": peer_best[0] if peer_best else None,
        "diffusers_best_variant": peer_best[1] if peer_best else None,
        "ratio_vs_diffusers": ratio,
        "mfu": mfu,
    })
