"""Shared helpers for benchmarks: environment record, CUDA-event timing, JSON output."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GUIDEDIFF_COMMIT", "unknown")


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
