"""The graph-ready DDGAN step (ddgan.step): on the CPU it draws what the classic step draws and
trains the same weights bit for bit (the EMA to rounding: a device decay in foreach ops); it is a
function of (seed, step), so a resumed run continues exactly; on a GPU its captured graphs (with
and without R1) compute what it computes eagerly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from guidediff.ddgan import train as ddgan_train
from guidediff.ddgan import update as ddgan_update
from guidediff.ddgan.config import load_config
from guidediff.ddgan.step import choose_step_mode
from guidediff.errors import UsageError

STATS = ("loss_d", "loss_g", "r1", "r2", "d_real", "d_fake")
TINY_UNET = ["generator.base_channels=16", "generator.channel_mult=[1, 2]", "generator.num_res_blocks=1",
             "generator.attention_resolutions=[14]", "generator.nz=8", "discriminator.base_channels=8",
             "discriminator.channel_mult=[1, 2]"]


def _config(kind: str, mode: str, steps: int, *extra: str):
    # lazy R1 every 2 steps with R2 on: both step variants run
    common = [f"train.steps={steps}", "train.log_every=1", "train.r1_every=2", "train.r2_gamma=0.01",
              f"train.cuda_graph={mode}", "train.finite_check=\"log\"", *extra]
    if kind == "toy":
        return load_config("grid25", None, ["generator.hidden=16", "discriminator.hidden=16", *common])
    return load_config("fmnist", None, TINY_UNET + ["train.batch_size=4", "data.conditional=true", "data.hflip=true",
                                                    *common])


def _image_data(device="cpu") -> ddgan_train.TrainingData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 28, 28, 1), generator=g, dtype=torch.uint8)
    return ddgan_train.TrainingData(x.to(device), (torch.arange(16) % 10).to(device), 10, (1, 28, 28))


def _run(run_dir, config, resume: bool = False):
    data = _image_data(config.train.device if config.train.device != "auto" else "cpu") if not config.is_toy else None
    ddgan_train.train(config, run_dir, progress=False, data=data, resume=resume)
    logs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [[d[k] for k in STATS] for d in logs], ddgan_train.read_ddgan_checkpoint(run_dir)[2]


@pytest.mark.parametrize("kind, extra", [
    ("toy", ()), ("image", ()),
    # DDGAN's own discriminator options: the minibatch spread and zero-initialised residual convs
    ("image", ("discriminator.minibatch_std=2", "discriminator.zero_init_residual=true")),
    # a decaying learning rate (on the CPU a float in both steps; the CUDA test covers the device tensor)
    ("toy", ("train.lr_schedule=\"cosine\"", "train.lr_decay_steps=4", "train.lr_final=0.2")),
])
def test_graph_ready_step_equals_classic_step_on_cpu(tmp_path, kind, extra):
    steps = 6 if kind == "toy" else 2
    classic = _run(tmp_path / "classic", _config(kind, "false", steps, "train.device=\"cpu\"", *extra))
    eager = _run(tmp_path / "eager", _config(kind, "\"eager\"", steps, "train.device=\"cpu\"", *extra))
    assert classic[0] == eager[0] and len(classic[0]) == steps  # every logged loss, exactly
    assert any(row[2] > 0 for row in classic[0]) and any(row[2] == 0 for row in classic[0])  # R1 and plain steps
    for part, tol in (("model", 0), ("optimizer", 0), ("ema", 1e-6)):
        assert classic[1][part].keys() == eager[1][part].keys()
        for k, v in classic[1][part].items():
            torch.testing.assert_close(eager[1][part][k], v, rtol=tol, atol=tol, msg=f"{part}.{k}")


@pytest.mark.parametrize("first_half, first_extra", [
    ("\"eager\"", ()), ("false", ()),
    # a classic run with the host's finite check per step may resume graph-ready, which needs "log"
    ("false", ("train.finite_check=\"step\"",)),
])
def test_graph_ready_run_resumes_exactly(tmp_path, first_half, first_extra):
    """6 graph-ready steps = 3 steps (graph-ready, or classic: a run may change its step mode and
    finite check when it resumes) + resume + 3 graph-ready steps."""
    once = _run(tmp_path / "once", _config("toy", "\"eager\"", 6, "train.device=\"cpu\""))
    _run(tmp_path / "twice", _config("toy", first_half, 3, "train.device=\"cpu\"", *first_extra))
    twice = _run(tmp_path / "twice", _config("toy", "\"eager\"", 6, "train.device=\"cpu\""), resume=True)
    torch.testing.assert_close(torch.tensor(twice[0]), torch.tensor(once[0]), rtol=1e-6, atol=1e-6)
    for part in ("model", "ema", "optimizer"):
        for k, v in once[1][part].items():
            torch.testing.assert_close(twice[1][part][k], v, rtol=1e-6, atol=1e-6, msg=f"{part}.{k}")


@pytest.mark.parametrize("mode", ["false", "\"eager\""])
def test_the_learning_rate_schedule_sets_each_steps_rates(tmp_path, mode):
    """The rate Adam uses at step s (logged after it) is lr·(f + (1 − f)·½(1 + cos(π·min(s/N, 1)))):
    the full rate at step 0, lr_final·lr from step N on (DDGAN's cosine annealing)."""
    extra = ["train.device=\"cpu\"", "train.lr_schedule=\"cosine\"", "train.lr_decay_steps=4", "train.lr_final=0.2"]
    config = _config("toy", mode, 6, *extra)
    ddgan_train.train(config, tmp_path / "run", progress=False)
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for record in logs:  # log_every = 1: the record after step k holds the rates of step k − 1
        s = record["step"] - 1
        factor = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(s / 4, 1.0)))
        assert record["lr_g"] == pytest.approx(config.train.lr_g * factor, rel=1e-6)
        assert record["lr_d"] == pytest.approx(config.train.lr_d * factor, rel=1e-6)
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6]


def test_a_resumed_run_continues_its_learning_rate_schedule(tmp_path):
    sched = ("train.device=\"cpu\"", "train.lr_schedule=\"cosine\"", "train.lr_decay_steps=5", "train.lr_final=0.1")
    once = _run(tmp_path / "once", _config("toy", "false", 6, *sched))
    _run(tmp_path / "twice", _config("toy", "false", 3, *sched))
    twice = _run(tmp_path / "twice", _config("toy", "false", 6, *sched), resume=True)
    for k, v in once[1]["model"].items():
        torch.testing.assert_close(twice[1]["model"][k], v, rtol=1e-6, atol=1e-6, msg=k)
    constant = _run(tmp_path / "constant", _config("toy", "false", 6, "train.device=\"cpu\""))
    assert any(not torch.equal(constant[1]["model"][k], v) for k, v in once[1]["model"].items())


def test_graph_ready_step_flags_a_nan_at_the_next_log_step(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_d_loss = ddgan_update.d_loss

    def poisoned(d_real, d_fake):  # the 4th discriminator loss (step 3) is NaN
        calls["n"] += 1
        out = real_d_loss(d_real, d_fake)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(ddgan_update, "d_loss", poisoned)
    config = _config("toy", "\"eager\"", 20, "train.device=\"cpu\"", "train.log_every=5", "train.checkpoint_every=2")
    with pytest.raises(ddgan_train.TrainingDiverged, match=r"non-finite at step 3 \(found at step 4\).*ckpt-0000002"):
        ddgan_train.train(config, tmp_path / "run", progress=False)


def test_step_mode_follows_cuda_graph_and_finite_check():
    notes = []

    def mode(cuda: bool, *overrides: str) -> str:
        return choose_step_mode(load_config("grid25", None, list(overrides)), cuda, log=notes.append)

    assert mode(False) == "classic" and mode(True) == "graphed"  # the default "auto", measured on an H200
    assert mode(False, "train.cuda_graph=\"auto\"") == "classic"
    assert mode(True, "train.cuda_graph=\"auto\"") == "graphed"
    assert mode(True, "train.cuda_graph=\"auto\"", "train.finite_check=\"step\"") == "classic"
    assert mode(True, "train.cuda_graph=false") == "classic"
    assert mode(True, "train.cuda_graph=\"eager\"") == mode(False, "train.cuda_graph=\"eager\"") == "graph-ready"
    assert not notes
    assert mode(False, "train.cuda_graph=true") == "graph-ready" and "needs a GPU" in notes[0]
    with pytest.raises(UsageError, match="finite_check.*cuda_graph=false"):
        load_config("grid25", None, ["train.cuda_graph=true", "train.finite_check=\"step\""])
    with pytest.raises(UsageError, match="train.cuda_graph must be"):
        load_config("grid25", None, ["train.cuda_graph=\"always\""])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_steps_equal_eager_steps_on_cuda(tmp_path, capsys):
    """Both captured variants (with R1/R2 and without) replay what the graph-ready step computes
    eagerly, from the same Philox positions (8 steps: each variant warms up twice, then replays)."""
    # the learning rates fall along a cosine: the graphs must read the device rate filled before each replay
    common = ("train.device=\"cuda\"", "train.mixed_precision=\"bf16\"", "train.lr_schedule=\"cosine\"",
              "train.lr_decay_steps=8", "train.lr_final=0.1")
    eager = _run(tmp_path / "eager", _config("image", "\"eager\"", 8, *common))
    graphed = _run(tmp_path / "graphed", _config("image", "true", 8, *common))
    assert "could not be captured" not in capsys.readouterr().err  # the graphs really ran
    torch.testing.assert_close(torch.tensor(graphed[0]), torch.tensor(eager[0]), rtol=2e-3, atol=2e-3)
    for part in ("model", "ema"):
        for k, v in eager[1][part].items():
            torch.testing.assert_close(graphed[1][part][k], v, rtol=2e-3, atol=2e-3, msg=f"{part}.{k}")
