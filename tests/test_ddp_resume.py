"""Resume across process counts: a run checkpointed by 2 processes and continued by 1 (and the
other way round) ends with the weights of one uninterrupted single-process run. Nothing in a
checkpoint depends on the process layout (full weights, full optimizer state, the step; batches
and noise are functions of (seed, step) and the global batch), and this checks it on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_helpers import TINY, requires_torchrun, tiny_folder, torchrun

pytestmark = [
    pytest.mark.slow,
    requires_torchrun,
]



def _launch(processes: int, out: Path, folder: Path, cache: Path, steps: int, resume: bool) -> None:
    launcher = torchrun(processes) if processes > 1 else [sys.executable]
    # adam_eps = 1: the update ≈ lr·g, so all-reduce rounding stays rounding in the weights (see test_ddp)
    args = ["train", "--config", str(TINY), "--out", str(out), "--no-progress", "--max-steps", str(steps),
            "--set", f"data.name={folder}", "--set", "data.resolution=8", "--set", "data.channels=1",
            "--set", "data.hflip=true", "--set", "train.log_every=1", "--set", "train.lr=0.05",
            "--set", "train.adam_eps=1.0", "--set", "train.checkpoint_every=2", "--set", "train.sample_every=100",
            "--set", "diffusion.antithetic=true", *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*launcher, "-m", "guidediff.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from guidediff.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpt, parts=("model", "ema"))
    return {f"{p}/{k}": v for p in ("model", "ema") for k, v in ck.tensors[p].items()}


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_resume_across_process_counts(tmp_path):
    folder, cache = tiny_folder(tmp_path / "images"), tmp_path / "cache"
    _launch(1, tmp_path / "straight", folder, cache, 4, resume=False)
    for first, second in ((2, 1), (1, 2)):
        run = tmp_path / f"from{first}to{second}"
        _launch(first, run, folder, cache, 2, resume=False)
        _launch(second, run, folder, cache, 4, resume=True)
        state = json.loads((run / "checkpoints" / "ckpt-0000004" / "state.json").read_text())
        assert state["world_size"] == second and state["images_seen"] == 4 * 8
        assert _losses(run) == pytest.approx(_losses(tmp_path / "straight"), rel=1e-6, abs=1e-7)
        want = _weights(tmp_path / "straight" / "checkpoints" / "ckpt-0000004")
        got = _weights(run / "checkpoints" / "ckpt-0000004")
        worst = max((want[k] - got[k]).abs().max().item() for k in want)
        assert worst < 1e-6, (first, second, worst)
    before = _weights(tmp_path / "straight" / "checkpoints" / "ckpt-0000002")
    moved = max((want[k] - before[k]).abs().max().item() for k in want)
    assert moved > 1e-3  # two steps move the weights far more than the tolerance
