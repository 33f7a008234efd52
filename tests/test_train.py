"""The training loop: a few steps, exact resume (N + N == 2N bit for bit on CPU), the time limit,
run-directory rules and bad input through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from guidediff.checkpoint import load_checkpoint
from guidediff.cli import main
from guidediff.errors import UsageError
from guidediff.train import train
from train_helpers import TINY, tiny_arrays, tiny_config, tiny_folder


def run(config, run_dir, **kw):
    return train(config, run_dir, dataset=tiny_arrays(), progress=False, log=lambda _m: None, **kw)


def test_few_steps_write_a_run(tmp_path):
    config = tiny_config("train.steps=4", "train.checkpoint_every=2", "train.sample_every=4", "train.log_every=1")
    result = run(config, tmp_path)
    assert result.finished and result.step == 4 and np.isfinite(result.final_loss)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    # linear warm-up over 2 steps, then constant
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["num_classes"] == 3 and saved["model"]["image_size"] == 8
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("ckpt-*"))] == ["ckpt-0000002", "ckpt-0000004"]
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "model.json").is_file()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step0000004_grid_w0.png",
                                                                        "step0000004_grid_w2.png"]
    ck = load_checkpoint(result.checkpoint)
    assert ck.step == 4 and ck.state["ema"]["num_updates"] == 4 and ck.state["images_seen"] == 32
    assert not any(k.startswith("_orig_mod") or k.startswith("module.") for k in ck.model)


def test_warmup_schedule(tmp_path):
    config = tiny_config("train.steps=3", "train.warmup_steps=4", "train.log_every=1")
    run(config, tmp_path)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # the lr logged after step k is the one the next step uses: (k + 1)/warmup · lr
    assert lrs == pytest.approx([2 / 4 * 1e-3, 3 / 4 * 1e-3, 1e-3])


def _tensors(path):
    ck = load_checkpoint(path)
    return {f"{part}/{k}": v for part in ("model", "ema", "optimizer") for k, v in ck.tensors[part].items()}


def test_resume_is_bit_exact(tmp_path):
    """2N steps in one go == N steps, resume, N steps (dropout, flips and warm-up all in play)."""
    opts = ("train.deterministic=true", "model.dropout=0.1", "data.hflip=true", "train.warmup_steps=3",
            "train.checkpoint_every=100", "train.log_every=1")
    straight = run(tiny_config("train.steps=6", *opts), tmp_path / "a")
    first = run(tiny_config("train.steps=3", *opts), tmp_path / "b")
    assert first.step == 3
    torch.manual_seed(1234)  # whatever the global RNG holds in between must not matter
    resumed = run(tiny_config("train.steps=6", *opts), tmp_path / "b", resume=True)
    assert resumed.step == 6
    a, b = _tensors(straight.checkpoint), _tensors(resumed.checkpoint)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    log_a = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert load_checkpoint(resumed.checkpoint).state["ema"]["num_updates"] == 6


def test_time_limit_stops_with_a_checkpoint_and_resumes(tmp_path):
    config = tiny_config("train.steps=5", "train.checkpoint_every=100")
    stopped = run(config, tmp_path, time_limit_s=0.0)
    assert stopped.stopped_by == "time_limit" and not stopped.finished and stopped.step == 1
    assert stopped.checkpoint.name == "ckpt-0000001" and (tmp_path / "model.safetensors").is_file()
    with pytest.raises(UsageError, match="already holds a run"):
        run(tiny_config("train.steps=5"), tmp_path)
    done = run(tiny_config("train.steps=5"), tmp_path, resume=True)
    assert done.finished and done.step == 5


def test_dataset_smaller_than_batch(tmp_path):
    with pytest.raises(UsageError, match="fewer than train.batch_size=64"):
        run(tiny_config("train.batch_size=64"), tmp_path)


def test_cli_train_time_limit_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tiny_folder(tmp_path / "images")
    out = tmp_path / "run"
    base = ["train", "--config", str(TINY), "--out", str(out), "--no-progress", f"--data.name={folder}",
            "--set", "data.resolution=8", "--set", "data.channels=1"]
    assert main([*base, "--time-limit", "0.000001"]) == 0
    text = capsys.readouterr().out
    assert "stopped by the time limit" in text and "ckpt-0000001" in text
    # resume needs no --config: the run's own config is used, with overrides on top
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--max-steps", "3"]) == 0
    text = capsys.readouterr().out
    assert "step 3 (finished)" in text and "images/s" in text
    state = load_checkpoint(out, parts=()).state
    assert state["commands"][0].startswith("guidediff train --config") and "--resume" in state["commands"][1]
    assert state["config"]["train"]["steps"] == 3


def test_cli_bad_image_and_skip(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tiny_folder(tmp_path / "images")
    (folder / "class0" / "broken.png").write_bytes(b"not a png")
    base = ["train", "--config", str(TINY), "--no-progress", "--set", f"data.name={folder}",
            "--set", "data.resolution=8", "--set", "data.channels=1", "--max-steps", "1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read image") and "broken.png" in err and "\n" not in err
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert main([*base, "--out", str(tmp_path / "b"), "--skip-bad-images"]) == 0


def test_cli_needs_a_config_to_start(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 2
    assert "pass --config FILE" in capsys.readouterr().err


def test_resumed_optimizer_moments_take_the_parameter_layout():
    # fused AdamW on CUDA rejects channels_last parameters whose moments are contiguous
    import torch

    from guidediff.checkpoint import match_state_layout

    conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters())
    conv(torch.randn(1, 4, 5, 5)).sum().backward()
    opt.step()
    state = opt.state_dict()
    state["state"][0]["exp_avg"] = state["state"][0]["exp_avg"].contiguous()
    opt.load_state_dict(state)
    assert opt.state[conv.weight]["exp_avg"].stride() != conv.weight.stride()
    match_state_layout(opt)
    for key in ("exp_avg", "exp_avg_sq"):
        assert opt.state[conv.weight][key].stride() == conv.weight.stride()
    torch.testing.assert_close(opt.state[conv.weight]["exp_avg"], state["state"][0]["exp_avg"])
