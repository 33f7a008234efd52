"""DDIM in log-SNR (Song et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from guidediff.errors import require
from guidediff.samplers.common import CLIP_X_HELP, THRESHOLD, Denoiser, check_grid, noise, positive_or_none, predict, steps_range
from guidediff.samplers.registry import Option, register_sampler
from guidediff.schedules import alpha_sigma


@register_sampler("ddim", help="DDIM: eta = 0 deterministic (probability flow), eta = 1 DDPM-like", options=(
    Option("eta", float, 0.0, "DDIM noise: 0 deterministic, 1 DDPM-like",
           check=lambda v: None if v >= 0 else f"must be >= 0, got {v}"),
    Option("clip_x", float, None, CLIP_X_HELP, check=positive_or_none),
    THRESHOLD,
))
def sample_ddim(
    denoiser: Denoiser,
    z: Tensor,
    lams: Tensor,
    c: Tensor,
    *,
    eta: float = 0.0,
    clip_x: float | None = None,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) in log-SNR. η = 0 is the deterministic probability-flow
    sampler; η = 1 draws from the posterior q(z_s|z_t, x̂) as DDPM does.

    z_s = α_s·x̂ + sqrt(σ_s² − σ_η²)·ε̂ + σ_η·ξ, with σ_η² = η²·(1 − e^{λ_t−λ_s})·σ_s².
    """
    check_grid(lams)
    require(eta >= 0.0, f"eta must be >= 0, got {eta}")
    for i in steps_range(len(lams) - 1, progress):
        lam_t, lam_s = lams[i], lams[i + 1]
        x, eps = predict(denoiser, z, lam_t, c, clip_x, threshold)
        alpha_s, sigma_s = alpha_sigma(lam_s)
        if eta == 0.0:
            z = alpha_s * x + sigma_s * eps
        else:
            var_eta = eta**2 * (-torch.expm1(lam_t - lam_s)) * sigma_s**2
            z = alpha_s * x + (sigma_s**2 - var_eta).clamp_min(0).sqrt() * eps + var_eta.sqrt() * noise(z, generator)
    return z
