"""The VDM's loss closure (bound in bits/dim, learned schedule with the variance hooks, Fourier
features) in the graph-ready training step: it computes what the classic step computes, so the
VDM may declare itself graph-safe; on a GPU, the captured graph computes what the same step
computes eagerly (passed on an H200; docs/vdm.md)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import tiny_arrays, tiny_config


def _run(run_dir, vdm, *overrides):
    from guidediff.checkpoint import latest_checkpoint
    from guidediff.vdm.training import train_vdm

    # dropout on and a tight clip: the step's randomness and its gradient norm are part of what must agree
    config = tiny_config("train.steps=5", "train.log_every=1", "train.checkpoint_every=100", "train.grad_clip=0.05",
                         "model.dropout=0.1", *overrides)
    train_vdm(config, run_dir, vdm, dataset=tiny_arrays(), sample_fn=lambda *a: None, progress=False,
              log=lambda _m: None)
    losses = [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    ck = latest_checkpoint(run_dir / "checkpoints")
    return losses, load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))


def _assert_same(a, b, rtol, ema_rtol=None):
    (losses_a, model_a, ema_a), (losses_b, model_b, ema_b) = a, b
    ema_rtol = rtol if ema_rtol is None else ema_rtol
    assert losses_a == pytest.approx(losses_b, rel=rtol, abs=0)
    assert model_a.keys() == model_b.keys() and ema_a.keys() == ema_b.keys()
    for name in model_a:
        torch.testing.assert_close(model_a[name], model_b[name], rtol=rtol, atol=rtol)
        torch.testing.assert_close(ema_a[name], ema_b[name], rtol=ema_rtol, atol=ema_rtol)


def _learned():
    from guidediff.vdm.config import VDMConfig

    # the default run's variant: learned schedule + variance hooks, Fourier features, antithetic times
    return VDMConfig(schedule="learned", schedule_hidden=8, fourier=True, fourier_n_min=7, fourier_n_max=7)


@pytest.mark.parametrize("variant", ["learned", "discrete-cosine"])
def test_vdm_graph_ready_step_equals_classic_step(tmp_path, variant):
    import dataclasses

    vdm = _learned() if variant == "learned" else dataclasses.replace(_learned(), schedule="cosine", timesteps=10,
                                                                       fourier=False)
    classic = _run(tmp_path / "classic", vdm, "train.cuda_graph=false")
    ready = _run(tmp_path / "ready", vdm, "train.cuda_graph=eager")
    # On the CPU both steps reseed per step and run the same forward, backward, clipping and AdamW:
    # losses and weights agree bit for bit. The EMA differs in the last bit (the graph-ready step
    # computes the decay in float64 on the device and applies it with foreach sub/mul/add, the
    # classic one with the EMA class's lerp): about 4e-7 relative after 5 steps.
    _assert_same(classic, ready, rtol=0, ema_rtol=2e-6)
    losses, model, _ = classic
    assert losses[0] != losses[-1]  # it trained
    if variant == "learned":
        start = _learned_start(vdm)
        # the learned schedule's shape and endpoints moved, and moved the same way in both steps
        assert not torch.equal(model["schedule.w2"], start["schedule.w2"])
        assert not torch.equal(model["schedule.gamma_0"], start["schedule.gamma_0"])


def _learned_start(vdm):
    from guidediff.runtime import derive_seed
    from guidediff.vdm.model import VDMModel, vdm_unet_config
    from guidediff.train import resolve_model_config

    config = tiny_config()
    resolve_model_config(config, tiny_arrays())
    torch.manual_seed(derive_seed(config.train.seed, "init"))  # what train_vdm does before it builds the net
    return {k: v.detach().clone() for k, v in VDMModel(vdm_unet_config(config.model, vdm), vdm).state_dict().items()}


def test_vdm_loss_declaration_reaches_the_mode_choice(tmp_path, monkeypatch):
    import guidediff.train_step as train_step
    from guidediff.vdm import model

    # the VDM declares itself graph-safe since its capture passed on an H200; a closure that does
    # not declare it keeps the classic step under "auto"
    assert not train_step.graph_safe(lambda *a: None) and model.GRAPH_SAFE
    assert train_step.choose_mode("auto", cuda=True, mixed_precision="bf16", graph_safe_loss=True) == "graphed"
    assert train_step.choose_mode("auto", cuda=True, mixed_precision="bf16", graph_safe_loss=False) == "classic"
    assert train_step.choose_mode(True, cuda=True, mixed_precision="bf16", graph_safe_loss=False) == "graphed"
    seen = []
    choose = train_step.choose_mode
    monkeypatch.setattr(train_step, "choose_mode", lambda *a, **k: seen.append(k["graph_safe_loss"]) or choose(*a, **k))
    for declared in (False, True):
        monkeypatch.setattr(model, "GRAPH_SAFE", declared)
        _run(tmp_path / str(declared), _learned(), "train.steps=1")
    assert seen == [False, True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vdm_graphed_step_equals_eager_step_on_cuda(tmp_path, capsys):
    common = ("train.device=cuda", "train.mixed_precision=bf16", "train.compile=false", "train.steps=8",
              "train.deterministic=true")
    eager = _run(tmp_path / "eager", _learned(), "train.cuda_graph=eager", *common)
    graphed = _run(tmp_path / "graphed", _learned(), "train.cuda_graph=true", *common)
    assert "could not be captured" not in capsys.readouterr().err  # the graph really ran
    _assert_same(eager, graphed, rtol=2e-3)
