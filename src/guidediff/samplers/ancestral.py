"""The CFG paper's ancestral sampler (Ho & Salimans 2022, Algorithm 2)."""

from __future__ import annotations

import torch
from torch import Tensor

from guidediff.diffusion import per_sample, posterior
from guidediff.errors import require
from guidediff.samplers.common import (
    CLIP_X_HELP,
    Denoiser,
    MeanShift,
    check_grid,
    noise,
    positive_or_none,
    predict,
    steps_range,
)
from guidediff.samplers.registry import Option, register_sampler
from guidediff.schedules import alpha_sigma


@register_sampler("ancestral", help="the CFG paper's ancestral sampler (variance exponent v)", options=(
    Option("v", float, 0.3, "ancestral variance exponent v in [0, 1] (CFG paper: 0.3)",
           check=lambda v: None if 0.0 <= v <= 1.0 else f"must lie in [0, 1], got {v}"),
    Option("clip_x", float, None, CLIP_X_HELP, check=positive_or_none),
    # how classifier guidance's mean form enters (guidance.classifier_mean_shift); library only
    Option("mean_shift", MeanShift, None, "mean_shift(z_t, lam_t, c, var) added to every step's mean"),
))
def sample_ancestral(
    denoiser: Denoiser,
    z: Tensor,
    lams: Tensor,
    c: Tensor,
    *,
    v: float = 0.3,
    clip_x: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    mean_shift: MeanShift | None = None,
) -> Tensor:
    """The CFG paper's ancestral sampler (Algorithm 2): z_s ~ N(μ̃_{s|t}(z_t, x̂), Σ) with
    Σ = (σ̃²_{s|t})^{1−v}·(σ²_{t|s})^v, interpolating between the posterior variance
    σ̃²_{s|t} = (1 − e^{λ_t−λ_s})σ_s² and the forward variance σ²_{t|s} = (1 − e^{λ_t−λ_s})σ_t².
    The last step returns the mean, without noise.

    ``mean_shift(z_t, lam_t, c, Σ)``, when given, is added to μ̃ before the noise, on every step
    (e.g. ``guidance.classifier_mean_shift``: μ̃ + s·Σ·∇ log p(c|z_t), Sohl-Dickstein et al. 2015)."""
    check_grid(lams)
    require(0.0 <= v <= 1.0, f"the variance exponent v must lie in [0, 1], got {v}")
    steps = len(lams) - 1
    for i in steps_range(steps, progress):
        lam_t, lam_s = lams[i], lams[i + 1]
        x, _ = predict(denoiser, z, lam_t, c, clip_x)
        mean, var_post = posterior(z, x, lam_t, lam_s)
        _, sigma_t = alpha_sigma(lam_t)
        var_fwd = -torch.expm1(lam_t - lam_s) * sigma_t**2
        var = var_post ** (1.0 - v) * per_sample(var_fwd, z) ** v
        if mean_shift is not None:
            mean = mean + mean_shift(z, lam_t, c, var)
        if i == steps - 1:
            z = mean
            continue
        z = mean + var.sqrt() * noise(z, generator)
    return z
