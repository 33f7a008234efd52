"""Data-parallel scaling: 1 GPU against 2 GPUs at the same images per GPU, through the project's own
training loop (guidediff.train), for configs/fmnist_cfg.toml and
configs/folder64_cfg.toml (on a 64×64 RGB image folder that this script makes from Fashion-MNIST).

Two launches in all (each process start-up, data load and compilation is paid once per layout):
  1 GPU   `python benchmarks/multi_gpu.py --worker ...` with CUDA_VISIBLE_DEVICES=0;
  2 GPUs  `python -m torch.distributed.run --nproc_per_node 2 benchmarks/multi_gpu.py --worker ...`
          (or `--launcher accelerate`: `accelerate launch --multi_gpu --num_processes 2`).
Each worker runs, per config:
  loss check  20 steps at the global batch 2 × per-GPU (1 GPU: 256 on one; 2 GPUs: 128 each),
              dropout 0 (its masks depend on the layout), not compiled, a loss logged every step;
  speed       per-GPU batch 128 (global 128 on 1 GPU, 256 on 2), the config's compile/bf16 settings,
              `--warmup` steps (compilation) then `--measure` steps in log windows of `--window`;
              images/s = the windows' images over their seconds (rank 0's clock; every window
              ends in a loss all-reduce, so both GPUs are done with it); peak memory per GPU =
              torch.cuda.max_memory_allocated of that run on each rank.
Both layouts train with the CUDA-graphed step by default (train.cuda_graph = auto): with 2 processes
the gradients are averaged by one NCCL all-reduce of a flat buffer inside the graph, without DDP.
Each run's `step_mode` is the step that actually ran (a failed capture reads "graph-ready");
`--classic` runs both layouts with the classic Accelerate step (train.cuda_graph=false; DDP for 2
processes), for DDP's scaling. `--tiny` rehearses on the CPU the graph-ready step that the GPU
captures (train.cuda_graph=eager), or the classic one with `--classic`.
The 2-GPU log is searched for DDP's "Grad strides do not match bucket view strides" warning and
NCCL's warning about a process group that was never destroyed. NCCL_NVLS_ENABLE=0 is set for
every process. Writes benchmarks/results/multi_gpu.json (or $BENCH_OUT/multi_gpu.json) after each
launch.

    PYTHONPATH=src python3 benchmarks/multi_gpu.py            # 2 GPUs, about 3 minutes on 2×H200
    PYTHONPATH=src python3 benchmarks/multi_gpu.py --classic  # the same, the classic step on both layouts
    PYTHONPATH=src python3 benchmarks/multi_gpu.py --tiny     # CPU rehearsal: gloo, 2 processes, tiny model
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink SHARP off: it can hang or fail in VMs and containers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

STRIDE_WARNING = "Grad strides do not match bucket view strides"
PG_WARNING = "destroy_process_group"  # NCCL: "process group has NOT been destroyed ... call destroy_process_group"


def _runs(args) -> list[dict]:
    """The configs measured: name, config file and the overrides that point it at its data."""
    if args.tiny:
        tiny = str(ROOT / "configs" / "tiny_test.toml")
        cpu = ["train.device=cpu"]
        return [{"name": "tiny_test.toml (fmnist)", "config": tiny, "set": [*cpu, "data.name=fmnist"]},
                {"name": "tiny_test.toml (folder)", "config": tiny,
                 "set": [*cpu, f"data.name={args.folder}", f"data.resolution={args.folder_size}",
                         "data.channels=3"]}]
    runs = [{"name": "fmnist_cfg.toml", "config": str(ROOT / "configs" / "fmnist_cfg.toml"), "set": []},
            {"name": "folder64_cfg.toml", "config": str(ROOT / "configs" / "folder64_cfg.toml"),
             "set": [f"data.name={args.folder}"]}]
    return [r for r in runs if r["name"].split("_")[0] in args.configs.split(",")]


# ---------------------------------------------------------------------------------------------
# worker: one process of a launch; trains through guidediff.train and writes rank<r>.json
# ---------------------------------------------------------------------------------------------

def _train_run(run: dict, args_set: list[str], overrides: list[str], run_dir: Path, tag: str):
    from guidediff.config import load_config
    from guidediff.train import train

    config = load_config(run["config"], [*run["set"], *args_set, *overrides])
    rank = int(os.environ.get("RANK", "0"))

    def say(msg: str) -> None:
        if rank == 0:
            print(f"[{tag}] {msg}", flush=True)

    t0 = time.time()
    result = train(config, run_dir, sample_fn=lambda *a: None, progress=False, log=say)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()] if rank == 0 else []
    return result, records, time.time() - t0, result.step_mode


def worker(args) -> int:
    import torch

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and not args.tiny
    out: dict = {"rank": rank, "world": world, "runs": []}
    for i, run in enumerate(_runs(args)):
        import torch._dynamo

        torch._dynamo.reset()  # the previous config's compiled graphs are of no use here
        root = Path(args.work) / f"{world}proc" / f"run{i}"  # fresh: the parent empties {world}proc first
        quiet = ["train.sample_every=1000000000", "train.checkpoint_every=1000000000", "train.keep_last=1",
                 "train.tensorboard=false"]
        # loss check: the same global batch on either layout, every step logged
        loss_overrides = [*quiet, f"train.batch_size={2 * args.per_gpu}", "model.dropout=0",
                          f"train.steps={args.loss_steps}", "train.log_every=1", "train.compile=false"]
        _, loss_log, loss_s, _ = _train_run(run, args.set, loss_overrides, root / "loss", f"{run['name']} loss, {world} proc")

        gc.collect()  # the loss check's model and data, before the peak is measured
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        steps = args.warmup + args.measure
        speed_overrides = [*quiet, f"train.batch_size={args.per_gpu * world}", f"train.steps={steps}",
                           f"train.log_every={args.window}"]
        result, speed_log, speed_s, mode = _train_run(run, args.set, speed_overrides, root / "speed",
                                                f"{run['name']} speed, {world} proc")
        entry = {"name": run["name"], "loss_s": loss_s, "speed_s": speed_s, "step_mode": mode,
                 "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                 "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None}
        if rank == 0:
            windows = [r for r in speed_log if args.warmup < r["step"]]
            images = sum(args.window * args.per_gpu * world for _ in windows)
            seconds = sum(args.window * args.per_gpu * world / r["images_per_sec"] for r in windows)
            entry.update(losses=[r["loss"] for r in loss_log], window_images_per_s=[r["images_per_sec"] for r in windows],
                         images_per_s=images / seconds if seconds else None, steps=result.step,
                         first_window_s=args.window * args.per_gpu * world / speed_log[0]["images_per_sec"]
                         if speed_log else None)
        out["runs"].append(entry)
        path = Path(args.work) / f"{world}proc" / f"rank{rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# parent: makes the image folder, launches the workers, merges and writes the result
# ---------------------------------------------------------------------------------------------

def make_folder(root: Path, per_class: int, size: int) -> Path:
    """per_class Fashion-MNIST training images of each class as size×size RGB PNGs (the gray value
    in all three channels), one sub-folder per class; kept when already complete."""
    import numpy as np
    from PIL import Image

    from guidediff.data.images import load_dataset

    marker = root / f".complete_{per_class}_{size}"
    if marker.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    data = load_dataset("fmnist", "train")
    for c, name in enumerate(data.class_names):
        folder = root / name.replace("/", "-").replace(" ", "_")
        folder.mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(data.labels == c)[:per_class]):
            img = Image.fromarray(data.images[i, :, :, 0]).resize((size, size), Image.BILINEAR).convert("RGB")
            img.save(folder / f"{k:05d}.png")
    marker.touch()
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_args(args) -> list[str]:
    argv = [str(Path(__file__).resolve()), "--worker", "--configs", args.configs, "--per-gpu", str(args.per_gpu),
            "--loss-steps", str(args.loss_steps), "--warmup", str(args.warmup), "--measure", str(args.measure),
            "--window", str(args.window), "--work", str(args.work), "--folder", str(args.folder),
            "--folder-size", str(args.folder_size), *[f"--set={item}" for item in args.set]]
    return argv + (["--tiny"] if args.tiny else [])


def launch(args, processes: int) -> tuple[int, str, float]:
    """Run one layout; its output is shown as it comes and returned for the warning search."""
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if args.tiny:
        env["OMP_NUM_THREADS"] = "1"
    if processes > 1 and not args.tiny:
        env["NCCL_DEBUG"] = "INFO"  # which transport NCCL picked (NVLink P2P, SHM through the host, ...)
    if processes == 1:
        cmd = [sys.executable, *_worker_args(args)]
        if not args.tiny:
            env["CUDA_VISIBLE_DEVICES"] = "0"
    elif args.launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--main_process_port", str(_free_port()), "--dynamo_backend", "no",
               *(["--cpu"] if args.tiny else ["--multi_gpu", "--mixed_precision", "bf16"]), *_worker_args(args)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *_worker_args(args)]
    print(f"$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    # a hung collective must not hold the machine: the whole launch is killed after --launch-timeout
    watchdog = threading.Timer(args.launch_timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in proc.stdout:
            if "NCCL INFO" not in line:  # kept for the transport digest, too many to show
                print(line, end="", flush=True)
            lines.append(line)
        rc = proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        os.killpg(proc.pid, signal.SIGKILL)
        rc = -9
    finally:
        watchdog.cancel()
    return rc, "".join(lines), time.time() - t0


def nccl_digest(log: str, limit: int = 12) -> list[str]:
    """NCCL's version and transport lines ("... via P2P/CUMEM", "via SHM"), each once."""
    seen: list[str] = []
    for line in log.splitlines():
        if "NCCL INFO" not in line or not any(k in line for k in (" via ", "NCCL version", "NVLS", "P2P is")):
            continue
        text = line.split("NCCL INFO", 1)[1].strip()
        if text not in seen:
            seen.append(text)
    return seen[:limit]


def _read_ranks(work: Path, processes: int) -> list[dict]:
    ranks = []
    for r in range(processes):
        path = work / f"{processes}proc" / f"rank{r}.json"
        ranks.append(json.loads(path.read_text()) if path.is_file() else {"runs": []})
    return ranks


def _max_rel(a: list[float], b: list[float]) -> float | None:
    if not a or len(a) != len(b):
        return None
    return max(abs(y / x - 1.0) if x else abs(y) for x, y in zip(a, b))


def summarize(args, launches: dict) -> dict:
    one, two = _read_ranks(args.work, 1), _read_ranks(args.work, 2)
    rows = []
    for i, run in enumerate(_runs(args)):
        r1 = one[0]["runs"][i] if i < len(one[0]["runs"]) else {}
        r2 = [rank["runs"][i] if i < len(rank["runs"]) else {} for rank in two]
        ips1, ips2 = r1.get("images_per_s"), r2[0].get("images_per_s")
        peaks = [r.get("peak_allocated_mib") for r in r2]
        rows.append({
            "config": run["name"], "gpus": 2,
            "images_per_s_1": ips1, "images_per_s_2": ips2,
            "ratio": ips2 / ips1 if ips1 and ips2 else None,
            "peak_mib_per_gpu": max(peaks) if all(p is not None for p in peaks) and peaks else None,
            "loss_equal_max_rel": _max_rel(r1.get("losses", []), r2[0].get("losses", [])),
            "peak_mib_per_gpu_by_rank": peaks, "peak_mib_1": r1.get("peak_allocated_mib"),
            "peak_reserved_mib_per_gpu_by_rank": [r.get("peak_reserved_mib") for r in r2],
            "window_images_per_s_1": r1.get("window_images_per_s"),
            "window_images_per_s_2": r2[0].get("window_images_per_s"),
            "losses_1": r1.get("losses"), "losses_2": r2[0].get("losses"),
            "first_window_s_1": r1.get("first_window_s"), "first_window_s_2": r2[0].get("first_window_s"),
            "step_mode_1": r1.get("step_mode"), "step_mode_2": r2[0].get("step_mode"),
        })
    return {"runs": rows, "launches": launches}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="fmnist,folder64", help="which of fmnist,folder64 to measure")
    p.add_argument("--per-gpu", type=int, default=None, help="images per GPU (default 128; --tiny: 4)")
    p.add_argument("--loss-steps", type=int, default=20, help="steps of the loss-equality check")
    p.add_argument("--warmup", type=int, default=None, help="steps before the measured ones (default 20; --tiny: 2)")
    p.add_argument("--measure", type=int, default=None, help="measured steps (default 100; --tiny: 4)")
    p.add_argument("--window", type=int, default=None, help="steps per log window (default 20; --tiny: 2)")
    p.add_argument("--folder-images", type=int, default=None, help="images per class of the folder (default 500)")
    p.add_argument("--folder-size", type=int, default=None, help="folder image size (default 64; --tiny: 16)")
    p.add_argument("--classic", action="store_true",
                   help="both layouts run the classic Accelerate step (train.cuda_graph=false; DDP for 2 "
                        "processes) instead of the CUDA-graphed step")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every run, e.g. train.compile=false; repeatable")
    p.add_argument("--launcher", choices=["torchrun", "accelerate"], default="torchrun")
    p.add_argument("--launch-timeout", type=float, default=420.0, help="seconds before a launch is killed")
    p.add_argument("--work", default=None, help="scratch folder (default runs/multi_gpu[_tiny])")
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal: gloo, 2 processes, tiny model, few steps")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    small = {"per_gpu": 4, "warmup": 2, "measure": 4, "window": 2, "folder_images": 20, "folder_size": 16}
    full = {"per_gpu": 128, "warmup": 20, "measure": 100, "window": 20, "folder_images": 500, "folder_size": 64}
    for key, value in (small if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tiny and args.loss_steps == 20:
        args.loss_steps = 5
    if args.classic and "train.cuda_graph=false" not in args.set:
        args.set.append("train.cuda_graph=false")
    if args.tiny and not any(item.startswith("train.cuda_graph=") for item in args.set):
        args.set.append("train.cuda_graph=eager")  # the CPU runs the step that a GPU captures, uncaptured
    args.work = Path(args.work or ROOT / "runs" / ("multi_gpu_tiny" if args.tiny else "multi_gpu")).resolve()
    args.folder = Path(args.folder or args.work / f"fmnist_folder{args.folder_size}").resolve()
    if args.worker:
        return worker(args)
    if args.measure % args.window or args.warmup % args.window:
        raise SystemExit(f"error: --warmup {args.warmup} and --measure {args.measure} must be multiples of "
                         f"--window {args.window}")

    import torch

    import common

    if not args.tiny and torch.cuda.device_count() < 2:
        raise SystemExit(f"error: this needs 2 GPUs, {torch.cuda.device_count()} visible; "
                         "rehearse on the CPU with --tiny")
    name = "multi_gpu_tiny" if args.tiny else "multi_gpu"
    # before any work: the result file may be written (a tiny run replaces its own scratch file)
    common.claim_result(name, str(args.work) if args.tiny else None, resume=args.tiny)
    others_at_start = common.gpu_processes() if torch.cuda.is_available() else []
    t_start = time.time()
    for sub in ("1proc", "2proc"):
        shutil.rmtree(args.work / sub, ignore_errors=True)
    if "folder64" in args.configs or args.tiny:
        make_folder(args.folder, args.folder_images, args.folder_size)
        from guidediff.data.images import load_dataset

        load_dataset(str(args.folder), "train", resolution=args.folder_size, channels=3)  # fills the decode cache
    print(f"image folder ready ({time.time() - t_start:.0f} s)", flush=True)

    launches: dict = {}
    payload: dict = {}
    for processes in (1, 2):
        rc, log, seconds = launch(args, processes)
        for run_dir in (args.work / f"{processes}proc").glob("run*"):
            shutil.rmtree(run_dir, ignore_errors=True)  # the checkpoints of a benchmark are not kept
        launches[f"{processes}_gpu" if not args.tiny else f"{processes}_proc"] = {
            "rc": rc, "seconds": seconds,
            "grad_stride_warning": STRIDE_WARNING in log,
            "process_group_warning": PG_WARNING in log,
            "nccl": nccl_digest(log),
        }
        payload = summarize(args, launches)
        payload.update(settings={
            "per_gpu_batch": args.per_gpu, "loss_steps": args.loss_steps, "loss_check_global_batch": 2 * args.per_gpu,
            "warmup_steps": args.warmup, "measured_steps": args.measure, "window_steps": args.window,
            "launcher": args.launcher, "folder": f"{args.folder_images} Fashion-MNIST training images per class, "
                                                f"{args.folder_size}x{args.folder_size} RGB PNG",
            "nccl_nvls_enable": "0", "gpus_visible": torch.cuda.device_count(),
            "loss_check": "dropout 0, not compiled, the config's mixed precision, a loss logged every step",
            "speed": "the config's compile and mixed-precision settings; images/s over the measured windows",
            "tiny": args.tiny, "overrides": args.set, "classic": args.classic,
        }, other_gpu_processes_at_start=others_at_start,
            note="The layouts ran one after the other: the 1-GPU run on GPU 0, then both GPUs for the 2-GPU run; "
                 "other_gpu_processes_at_start lists what else nvidia-smi saw on the machine's GPUs. Peak memory is "
                 "torch.cuda.max_memory_allocated of the speed run on each rank (rank 0 also holds the EMA weights).",
            total_s=time.time() - t_start)
        common.write_result(name, payload, out_dir=str(args.work) if args.tiny else None)
        if rc != 0:
            print(f"error: the {processes}-process launch failed (exit {rc}); see its output above", file=sys.stderr)
            return 1

    print(f"\n{'config':26s} {'img/s 1':>9s} {'img/s 2':>9s} {'ratio':>6s} {'peak MiB':>9s} {'loss rel':>9s}")
    for r in payload["runs"]:
        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{r['config']:26s} {fmt(r['images_per_s_1'], '9.0f')} {fmt(r['images_per_s_2'], '9.0f')} "
              f"{fmt(r['ratio'], '6.2f')} {fmt(r['peak_mib_per_gpu'], '9.0f')} {fmt(r['loss_equal_max_rel'], '9.1e')}")
    for name, info in launches.items():
        print(f"{name}: {info['seconds']:.0f} s, stride warning: {info['grad_stride_warning']}, "
              f"process-group warning: {info['process_group_warning']}")
        for line in info["nccl"]:
            print(f"  NCCL: {line}")
    print(f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
