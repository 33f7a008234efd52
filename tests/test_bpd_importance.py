"""`guidediff bpd`'s importance sampling over λ (VDM §5): the same continuous-time bound as uniform
u on the model's schedule, with a lower variance on a steep (CFG) schedule."""

from __future__ import annotations

import math

import torch

from guidediff.nets.unet import UNetConfig
from guidediff.vdm.bpd import evaluate_bpd
from guidediff.vdm.config import VDMConfig
from guidediff.vdm.model import VDMModel, vdm_unet_config
from guidediff.vdm.variance import pilot_importance_schedule


def tiny_model(schedule: str, lam_min: float, lam_max: float) -> VDMModel:
    vdm = VDMConfig(schedule=schedule, lam_min=lam_min, lam_max=lam_max, fourier=False,
                    variance_minimisation=False, antithetic=False)
    unet = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                      attention_resolutions=(), head_channels=8, num_classes=3)
    torch.manual_seed(0)
    model = VDMModel(vdm_unet_config(unet, vdm), vdm).eval()
    with torch.no_grad():  # the output layer starts at zero; give ε̂ a λ-dependent, imperfect shape
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 127.5 - 1
    return x, torch.randint(0, 3, (n,), generator=g)


def both(model, n=96):
    xp, cp = images(8, seed=1)  # the pilot: other images, other noise
    x, c = images(n, seed=2)
    schedule = pilot_importance_schedule(model.denoiser, model.schedule, xp, cp, bins=16, seed=3)
    uniform = evaluate_bpd(model, x, c, seed=4, T=0)
    importance = evaluate_bpd(model, x, c, seed=4, T=0, schedule=schedule)
    return uniform, importance


def test_importance_sampling_keeps_the_bound():
    uniform, importance = both(tiny_model("linear", -6.0, 6.0))
    gap = abs(uniform.bpd - importance.bpd)
    assert gap < math.hypot(uniform.bpd_ci95, importance.bpd_ci95), (uniform.bpd, importance.bpd)
    for name in ("prior", "reconstruction"):  # the endpoints are the model's: these terms are untouched
        assert math.isclose(uniform.terms[name]["bpd"], importance.terms[name]["bpd"], rel_tol=1e-5)


def test_importance_sampling_lowers_the_variance_on_the_cfg_schedule():
    uniform, importance = both(tiny_model("cfg", -20.0, 20.0))
    assert importance.bpd_std < 0.5 * uniform.bpd_std, (uniform.bpd_std, importance.bpd_std)
