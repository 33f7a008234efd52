"""The shipped weights load by name and produce class-dependent images."""

from __future__ import annotations

import torch

from guidediff.loading import load_model
from guidediff.guidance import cfg
from guidediff.nets.fmnist_classifier import load_eval_classifier
from guidediff.precondition import wrap_for_config
from guidediff.samplers import sample_ddim
from guidediff.schedules import lam_grid, schedule_from_config


def test_fmnist_cfg_loads_by_name_and_samples():
    net, config = load_model("fmnist-cfg", "cpu")
    assert config.model.num_classes == 10 and config.diffusion.p_uncond > 0
    z = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    lams = lam_grid(schedule_from_config(config.diffusion), 4)
    eps_model = wrap_for_config(net, config.diffusion)  # the README's Python tour
    with torch.no_grad():
        trousers = sample_ddim(cfg(eps_model, 1.0, 10), z, lams, torch.tensor([1, 1]), clip_x=1.0)
        bags = sample_ddim(cfg(eps_model, 1.0, 10), z, lams, torch.tensor([8, 8]), clip_x=1.0)
    assert trousers.abs().max() <= 1.001  # x̂ clipped to [-1, 1], plus σ(λ_max)·ε̂ ≈ 5e-5
    assert (trousers - bags).abs().mean() > 0.1


def test_shipped_classifier_loads():
    classifier = load_eval_classifier(None, "cpu")
    logits = classifier(torch.zeros(1, 1, 28, 28))
    assert logits.shape == (1, 10)
