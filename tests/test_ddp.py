"""Data parallel training: 2 CPU processes (gloo, launched by torchrun) compute what 1 process
computes on the same global batch: the same losses, the same averaged gradients (their global
norm is logged every step) and the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_helpers import TINY, requires_torchrun, tiny_folder, torchrun

pytestmark = pytest.mark.slow



def _train(launcher: list[str], out: Path, folder: Path, cache: Path) -> list[dict]:
    # adam_eps = 1 makes the update ≈ lr·g, linear in the gradient, so float noise in the
    # all-reduce stays float noise in the weights (plain Adam would turn the sign of ~0 gradients
    # into whole lr-sized steps); a wrong split of the batch still moves the weights by ~lr·|Δg|.
    args = ["train", "--config", str(TINY), "--out", str(out), "--no-progress", "--set", f"data.name={folder}",
            "--set", "data.resolution=8", "--set", "data.channels=1", "--set", "data.hflip=true",
            "--set", "train.log_every=1", "--set", "train.lr=0.05", "--set", "train.adam_eps=1.0",
            "--set", "train.steps=4", "--set", "train.sample_every=100", "--set", "diffusion.antithetic=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*launcher, "-m", "guidediff.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from guidediff.checkpoint import load_checkpoint

    ck = load_checkpoint(path, parts=("model", "ema"))
    return {f"{p}/{k}": v for p in ("model", "ema") for k, v in ck.tensors[p].items()}


@requires_torchrun
def test_two_processes_match_one(tmp_path):
    folder = tiny_folder(tmp_path / "images")
    cache = tmp_path / "cache"
    two = _train(torchrun(2), tmp_path / "two", folder, cache)
    one = _train([sys.executable], tmp_path / "one", folder, cache)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-6, worst
    before = _weights(tmp_path / "one" / "checkpoints" / "ckpt-0000003")
    step = max((wa[k] - before[k]).abs().max().item() for k in wa)
    assert step > 1e-3  # one step moves the weights far more than the tolerance
    state = json.loads((tmp_path / "two" / "checkpoints" / "ckpt-0000004" / "state.json").read_text())
    assert state["world_size"] == 2

