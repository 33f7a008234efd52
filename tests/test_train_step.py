"""The graph-ready training step (device EMA decay and lr, static batch indices, no host reads)
computes what the classic Accelerate step computes; on a GPU, the captured graph computes what
the same step computes eagerly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from guidediff.train import train
from guidediff.train_step import choose_mode, ema_decay_tensor
from guidediff.ema import ema_decay
from train_helpers import tiny_arrays, tiny_config


def _run(run_dir, *overrides):
    # dropout and hflip on: the randomness of the step is part of what must agree
    config = tiny_config("train.steps=6", "train.log_every=1", "train.checkpoint_every=100", "train.grad_clip=0.05",
                         "model.dropout=0.1", "data.hflip=true", *overrides)
    train(config, run_dir, dataset=tiny_arrays(), sample_fn=lambda *a: None, progress=False, log=lambda _m: None)
    losses = [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    from guidediff.checkpoint import latest_checkpoint

    ck = latest_checkpoint(run_dir / "checkpoints")
    return losses, load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))


def _assert_same(a, b, rtol):
    losses_a, model_a, ema_a = a
    losses_b, model_b, ema_b = b
    assert losses_a == pytest.approx(losses_b, rel=rtol)
    for name in model_a:
        torch.testing.assert_close(model_a[name], model_b[name], rtol=rtol, atol=rtol)
        torch.testing.assert_close(ema_a[name], ema_b[name], rtol=rtol, atol=rtol)


def test_a_second_training_in_one_process_may_change_the_precision(tmp_path):
    """accelerate keeps one precision per process; a later train() (a notebook, a test session after
    a CPU run) gets its own instead of an error (seen on the H200, where the CPU tests ran first)."""
    steps = ("train.steps=2", "train.log_every=1")
    train(tiny_config("train.mixed_precision=no", *steps), tmp_path / "fp32", dataset=tiny_arrays(),
          sample_fn=lambda *a: None, progress=False, log=lambda _m: None)
    train(tiny_config("train.mixed_precision=bf16", *steps), tmp_path / "bf16", dataset=tiny_arrays(),
          sample_fn=lambda *a: None, progress=False, log=lambda _m: None)
    from accelerate.state import AcceleratorState

    assert str(AcceleratorState().mixed_precision) == "bf16"
    assert (tmp_path / "bf16" / "log.jsonl").read_text().count("loss") == 2


def test_graph_ready_step_equals_classic_step(tmp_path):
    classic = _run(tmp_path / "classic", "train.cuda_graph=false")
    ready = _run(tmp_path / "ready", "train.cuda_graph=eager")
    _assert_same(classic, ready, rtol=1e-5)
    # the runs moved: equal because they compute the same thing, not because nothing happened
    assert classic[0][0] != classic[0][-1]


def test_graph_request_on_cpu_falls_back_with_a_note():
    notes = []
    mode = choose_mode(True, cuda=False, mixed_precision="no", graph_safe_loss=True, log=notes.append)
    assert mode == "graph-ready" and "needs a GPU" in notes[0]
    assert choose_mode("auto", cuda=False, mixed_precision="no", graph_safe_loss=True) == "classic"
    assert choose_mode("auto", cuda=True, mixed_precision="bf16", graph_safe_loss=False) == "classic"
    # several processes are graphed too (their own all-reduce in the graph, no DDP); fp16 is not
    assert choose_mode("auto", cuda=True, mixed_precision="bf16", graph_safe_loss=True) == "graphed"
    assert choose_mode("eager", cuda=False, mixed_precision="no", graph_safe_loss=True) == "graph-ready"
    assert choose_mode("auto", cuda=True, mixed_precision="fp16", graph_safe_loss=True) == "classic"
    assert choose_mode(True, cuda=True, mixed_precision="fp16", graph_safe_loss=True,
                       log=notes.append) == "classic" and "fp16" in notes[-1]
    assert choose_mode("auto", cuda=True, mixed_precision="bf16", graph_safe_loss=True) == "graphed"


def test_device_ema_decay_matches_host_formula():
    n = torch.arange(0, 50, dtype=torch.float64)
    for warmup in (True, False):
        want = torch.tensor([ema_decay(int(k), 0.999, warmup) for k in n], dtype=torch.float64)
        torch.testing.assert_close(ema_decay_tensor(n, 0.999, warmup), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_step_equals_eager_step_on_cuda(tmp_path, capsys):
    common = ("train.device=cuda", "train.mixed_precision=bf16", "train.compile=false", "train.steps=8",
              "train.deterministic=true")
    eager = _run(tmp_path / "eager", "train.cuda_graph=eager", *common)
    graphed = _run(tmp_path / "graphed", "train.cuda_graph=true", *common)
    assert "could not be captured" not in capsys.readouterr().err  # the graph really ran
    _assert_same(eager, graphed, rtol=2e-3)


def test_auto_keeps_post_hoc_ema_out_of_the_graph_until_verified():
    from guidediff.train_step import graph_setting

    notes = []
    assert graph_setting("auto", posthoc_ema=True, cuda=True, log=notes.append) is False
    assert "not verified on a GPU" in notes[0]
    assert graph_setting("auto", posthoc_ema=True, cuda=False, log=notes.append) == "auto"
    assert graph_setting("auto", posthoc_ema=False, cuda=True, log=notes.append) == "auto"
    assert graph_setting(True, posthoc_ema=True, cuda=True, log=notes.append) is True and len(notes) == 1
