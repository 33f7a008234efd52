"""Shared helpers for benchmarks: environment record, CUDA-event timing, JSON output."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# NVIDIA H200 SXM: 989 TFLOP/s dense bf16 tensor-core peak (1,979 with 2:4 sparsity); MFU is against it
PEAK_BF16_TFLOPS = 989.0


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


def device_name(device: str | torch.device | None = None) -> str:
    """What a result records as its device: "cpu", or the GPU's name for a CUDA device; None or
    "auto" is this machine's default (the GPU when there is one). A run with --device cpu on a GPU
    machine is a CPU measurement and must say so."""
    if device is None or str(device) == "auto":
        return environment()["device"]
    try:
        device = torch.device(device)
    except RuntimeError:
        raise SystemExit(f"error: --device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device.type
    return torch.cuda.get_device_name(device.index or 0) if torch.cuda.is_available() else "cuda (unavailable)"


def stamp_from_parts(stamps: list[dict | None], mixed: str) -> dict:
    """The device, torch and commit of a file collected from parts measured apart: the one every
    part's stamp shares, else ``mixed`` (a sentence saying where each part says it). A part
    without a stamp (None) makes every key mixed. Never the last writer's alone."""
    if not stamps:
        return {}
    stamp = {}
    for key in ("device", "torch", "commit"):
        values = {str(s.get(key)) for s in stamps} if all(stamps) else set()
        stamp[key] = values.pop() if len(values) == 1 else mixed
    if stamp["torch"] == mixed:
        stamp["cuda"] = mixed
    return stamp


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


def counted_flops(fn) -> int:
    """FLOPs of whatever fn() runs (forward and backward alike), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def mfu(images_per_s: float, flops_per_image: float | None) -> dict | None:
    """Model FLOP utilisation: counted model FLOPs per image × images/s over the dense bf16 peak."""
    if not flops_per_image:
        return None
    achieved = images_per_s * flops_per_image / 1e12
    return {"achieved_tflops": achieved, "flops_per_image": flops_per_image,
            "peak_bf16_dense_tflops": PEAK_BF16_TFLOPS, "mfu_vs_peak": achieved / PEAK_BF16_TFLOPS}


def other_processes_on(smi_csv: str, device_uuid: str | None, own_pid: int) -> list[str]:
    """The "pid, used_memory" of other compute processes on our GPU, from the lines of
    ``nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader``. nvidia-smi lists
    the processes of every GPU of the machine; without our GPU's UUID all of them count."""
    ours = device_uuid.lower().removeprefix("gpu-") if device_uuid else None
    others = []
    for line in smi_csv.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or fields[1] == str(own_pid):
            continue
        if ours is None or fields[0].lower().removeprefix("gpu-") == ours:
            others.append(f"{fields[1]}, {fields[2]}")
    return others


def gpu_processes(device_uuid: str | None = None) -> list[str]:
    """Other compute processes on the GPU ``device_uuid`` (None: on any GPU of the machine), as
    "pid, used_memory" lines, or one "nvidia-smi failed: ..." line."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
        return other_processes_on(out, device_uuid, os.getpid())
    except Exception as exc:  # noqa: BLE001 - a missing nvidia-smi must not end the benchmark
        return [f"nvidia-smi failed: {exc}"]


def gpu_sharing(device: str | torch.device | None = None) -> dict:
    """Who else is on our GPU (``device``; default the current one): other compute processes
    (nvidia-smi) and memory not ours."""
    if not torch.cuda.is_available():
        return {"alone": None, "note": "no GPU"}
    chosen = torch.device(device) if device is not None and str(device) != "auto" else torch.device("cuda")
    index = chosen.index if chosen.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    others = gpu_processes(str(uuid) if uuid is not None else None)
    free, total = torch.cuda.mem_get_info(index)
    not_ours = (total - free - torch.cuda.memory_reserved(index)) / 2**20
    # our CUDA context itself takes ~0.5-1 GiB that memory_reserved does not count
    alone = not [o for o in others if not o.startswith("nvidia-smi failed")] and not_ours < 2048
    return {"alone": alone, "other_processes": others, "memory_not_ours_mib": round(not_ours),
            "note": "GPU to itself" if alone else "GPU SHARED: other processes or memory seen; times may be low"}


def sharing_began(device: str | torch.device | None) -> dict | None:
    """gpu_sharing(device) at a run's start when it runs on a GPU (None on the CPU); hand it to
    sharing_record at the end, so the result says who else was on that GPU at both ends."""
    return gpu_sharing(device) if device_name(device) != "cpu" else None


def sharing_record(began: dict | None, device: str | torch.device | None) -> dict | None:
    """{"began": ..., "ended": gpu_sharing(device) now}, or None for a CPU run."""
    return None if began is None else {"began": began, "ended": gpu_sharing(device)}


def profile_summary(fn, top: int = 10) -> dict:
    """torch.profiler over one call of fn(): the ``top`` kernels by GPU time, GPU busy time (union
    of kernel/copy intervals) against the wall time, and the idle fraction (launch gaps, host work)."""
    if not torch.cuda.is_available():
        return {"note": "no GPU"}
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            fn()
            sync()
            wall_us = (time.perf_counter() - start) * 1e6
        gpu = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        spans = sorted((e.time_range.start, e.time_range.end) for e in gpu)
        busy, cur = 0.0, None
        for a, b in spans:
            if cur is None or a > cur[1]:
                if cur is not None:
                    busy += cur[1] - cur[0]
                cur = [a, b]
            else:
                cur[1] = max(cur[1], b)
        if cur is not None:
            busy += cur[1] - cur[0]
        per_kernel: dict[str, list] = {}
        for e in gpu:
            entry = per_kernel.setdefault(e.name, [0.0, 0])
            entry[0] += e.time_range.end - e.time_range.start
            entry[1] += 1
        largest = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]
        return {
            "wall_ms": wall_us / 1e3,
            "gpu_busy_ms": busy / 1e3,
            "gpu_idle_fraction": max(0.0, 1.0 - busy / wall_us),
            "kernels": len(gpu),
            "top_kernels": [{"name": name[:120], "total_ms": t / 1e3, "calls": n,
                             "share_of_busy": t / busy if busy else None} for name, (t, n) in largest],
        }
    except Exception as exc:  # noqa: BLE001 - a profiler problem must not lose the timings
        return {"error": f"{type(exc).__name__}: {exc}"}


def profile_best(rows: dict[str, dict], runs: dict, what: str = "", **extra) -> dict:
    """Profile the fastest working variant of each side (``ours``, ``diffusers``): ``runs[name]`` is
    a callable that runs it once; ``extra`` is recorded with each profile. Prints and returns them."""
    profiles = {}
    for side in ("ours", "diffusers"):
        ok = [(v["images_per_s"], k) for k, v in rows.items() if k.startswith(side) and "error" not in v]
        if ok:
            best = max(ok)[1]
            profiles[best] = {**profile_summary(runs[best]), **extra}
            print_profile(f"{best}{what}", profiles[best])
    return profiles


def print_profile(label: str, summary: dict) -> None:
    if "top_kernels" not in summary:
        print(f"profile {label}: {summary}")
        return
    print(f"profile {label}: wall {summary['wall_ms']:.1f} ms, GPU busy {summary['gpu_busy_ms']:.1f} ms, "
          f"idle {100 * summary['gpu_idle_fraction']:.0f}%, {summary['kernels']} kernels")
    for k in summary["top_kernels"]:
        print(f"  {k['total_ms']:8.2f} ms  {k['calls']:5d}x  {k['name'][:90]}")


def peak_memory_mib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def refuse_other_device(path: Path, device: str | None = None) -> None:
    """A committed result measured on another device (an H200's, say) is not replaced by a run
    here (a CPU smoke run, say) unless BENCH_OVERWRITE=1: send such runs elsewhere with BENCH_OUT.
    ``device``: the device the new payload says it was measured on (a merge of GPU results run on a
    CPU keeps the GPU's); default this machine's."""
    if not path.is_file() or os.environ.get("BENCH_OVERWRITE") == "1":
        return
    try:
        theirs = json.loads(path.read_text()).get("device")
    except (OSError, ValueError, AttributeError):
        return
    ours = device or environment()["device"]
    if any(str(d).startswith("mixed") for d in (theirs, ours)):
        return  # a file of parts from several devices, each saying where: its benchmark checks per part
    if theirs and theirs != ours:
        raise SystemExit(f"error: {path} holds results measured on {theirs}, not on {ours} (where these numbers come "
                         f"from); write elsewhere with BENCH_OUT=DIR, or set BENCH_OVERWRITE=1 to replace them")


def claim_result(name: str, out_dir: str | None = None, *, resume: bool = False, device: str | None = None,
                 parts_say_where: bool = False) -> Path:
    """Before any work: the path ``write_result`` will write, checked now — its folder writable, no
    committed result from another device in the way (``device``: the one the new numbers come from,
    default this machine's) and no earlier result at all unless ``resume`` (the benchmark continues
    or merges into it) or BENCH_OVERWRITE=1 — so a run neither replaces what it did not make nor
    finds out at its end."""
    target = Path(out_dir or os.environ.get("BENCH_OUT") or RESULTS)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"error: cannot create the results folder {target} ({exc.strerror or exc}); "
                         "pass a writable --out or BENCH_OUT") from None
    if not os.access(target, os.W_OK):
        raise SystemExit(f"error: the results folder {target} is not writable; pass a writable --out or BENCH_OUT")
    path = target / f"{name}.json"
    if not parts_say_where:  # else each part of the file is stamped with its device, and checked per part
        refuse_other_device(path, device)
    if path.is_file() and not resume and os.environ.get("BENCH_OVERWRITE") != "1":
        raise SystemExit(f"error: {path} already holds a result; write elsewhere (BENCH_OUT=DIR, or the benchmark's "
                         "own output option), or set BENCH_OVERWRITE=1 to replace it")
    return path


def write_result(name: str, payload: dict, out_dir: str | None = None) -> Path:
    """Write benchmarks/results/<name>.json (or into $OUT when set) and return the path."""
    target = Path(out_dir or os.environ.get("BENCH_OUT") or RESULTS)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.json"
    refuse_other_device(path, payload.get("device"))
    from guidediff.checkpoint import write_text_atomic

    write_text_atomic(path, json.dumps({**environment(), **payload}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def summarize(rows: dict[str, dict], forwards_per_image: float | None = None,
              forward_gflops: float | None = None) -> dict:
    """Print the variant table; ours best / diffusers best, and the model FLOP utilisation of each
    variant that carries ``flops_per_image`` (counted) — else forwards × forward GFLOPs."""
    for row in rows.values():
        if "error" not in row and row.get("flops_per_image"):
            row["mfu"] = mfu(row["images_per_s"], row["flops_per_image"])
    ok = {k: v for k, v in rows.items() if "error" not in v}
    ours_best = max((v["images_per_s"], k) for k, v in ok.items() if k.startswith("ours"))
    peer = [(v["images_per_s"], k) for k, v in ok.items() if k.startswith("diffusers")]
    peer_best = max(peer) if peer else None
    ratio = ours_best[0] / peer_best[0] if peer_best else None
    best_mfu = ok[ours_best[1]].get("mfu")
    if best_mfu is None and forward_gflops and forwards_per_image:
        best_mfu = mfu(ours_best[0], forwards_per_image * forward_gflops * 1e9)
    width = max(len(k) for k in rows) + 2
    print(f"{'variant':{width}s} {'images/s':>10s} {'peak MiB':>10s} {'MFU':>7s}")
    for variant, row in rows.items():
        if "error" in row:
            print(f"{variant:{width}s} failed: {row['error'][:100]}")
            continue
        mem = row["peak_memory_mib"]
        util = row.get("mfu")
        util_text = "-" if util is None else f"{100 * util['mfu_vs_peak']:.1f}%"
        print(f"{variant:{width}s} {row['images_per_s']:10.1f} {'-' if mem is None else str(round(mem)):>10} "
              f"{util_text:>7}")
    if ratio:
        print(f"ours best ({ours_best[1]}) / diffusers best ({peer_best[1]}): {ratio:.2f}x")
    if best_mfu:
        print(f"model FLOP utilisation of ours best: {best_mfu['achieved_tflops']:.1f} TFLOP/s = "
              f"{100 * best_mfu['mfu_vs_peak']:.1f}% of the {PEAK_BF16_TFLOPS:g} TFLOP/s dense bf16 peak")
    return {
        "variants": rows,
        "ours_images_per_s": ours_best[0],
        "ours_best_variant": ours_best[1],
        "diffusers_images_per_s": peer_best[0] if peer_best else None,
        "diffusers_best_variant": peer_best[1] if peer_best else None,
        "ratio_vs_diffusers": ratio,
        "mfu": best_mfu,
    }


def report_against_peer(name: str, task: dict, rows: dict[str, dict], forwards_per_image: float | None = None,
                        forward_gflops: float | None = None, extra: dict | None = None) -> None:
    """summarize(rows) and write benchmarks/results/<name>.json with ``task`` and ``extra``.
    Rows named 'ours_*' and 'diffusers_*' are compared."""
    summary = summarize(rows, forwards_per_image, forward_gflops)
    summary["mfu_peak_used"] = f"{PEAK_BF16_TFLOPS:g} TFLOP/s dense bf16 (H200 SXM datasheet)"
    summary["measured_bf16_matmul_tflops"] = matmul_tflops()
    write_result(name, {"task": task, **summary, **(extra or {})})


def parse_sampler_config(text: str) -> tuple[str, str, float | None, str]:
    """'SAMPLER-GRID[@SIGMA_MAX]' -> (sampler, grid, sigma_max or None, the canonical name that keys
    the JSON rows, so '@80' and '@80.0' are one point and each sigma_max another)."""
    import math

    from guidediff.samplers import SAMPLERS
    from guidediff.schedules import GRIDS

    head, at, tail = text.partition("@")
    sampler, _, grid = head.rpartition("-")
    try:
        sigma_max = float(tail) if at else None
    except ValueError:
        sigma_max = math.nan
    if (sampler not in SAMPLERS or grid not in GRIDS
            or (sigma_max is not None and not (math.isfinite(sigma_max) and sigma_max > 0))):
        raise SystemExit(f"bad sampler config {text!r}: write SAMPLER-GRID or SAMPLER-GRID@SIGMA_MAX with a sampler "
                         f"of {', '.join(SAMPLERS)} and a grid of {', '.join(GRIDS)}, e.g. dpmpp-2m-karras@80")
    return sampler, grid, sigma_max, f"{sampler}-{grid}" + ("" if sigma_max is None else f"@{sigma_max:g}")
