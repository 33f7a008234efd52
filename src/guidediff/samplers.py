"""Samplers: plain functions over a denoiser ``denoiser(z, lam, c) -> eps_hat`` and a grid of λ.

``lams`` holds steps + 1 increasing log-SNRs (from ``schedules.lam_grid``); each step evaluates
the denoiser once at lams[i] and moves z to lams[i+1]. Samplers know nothing about guidance.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import eps_to_x, per_sample, posterior
from guidediff.errors import require
from guidediff.schedules import alpha_sigma

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


def _check(lams: Tensor) -> None:
    require(lams.dim() == 1 and lams.numel() >= 2, "lams must be a 1-D grid of at least 2 log-SNRs (steps >= 1)")
    require(bool((lams[1:] > lams[:-1]).all()), "lams must increase (from noisy λ_min to clean λ_max)")


def _noise(z: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


def _progress(steps: int, progress: bool | None):
    if not progress:
        return range(steps)
    from tqdm.auto import tqdm

    return tqdm(range(steps), desc="sampling", leave=False)


def sample_ddim(
    denoiser: Denoiser,
    z: Tensor,
    lams: Tensor,
    c: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) in log-SNR. η = 0 is the deterministic probability-flow
    sampler; η = 1 draws from the posterior q(z_s|z_t, x̂) as DDPM does.

    z_s = α_s·x̂ + sqrt(σ_s² − σ_η²)·ε̂ + σ_η·ξ, with σ_η² = η²·(1 − e^{λ_t−λ_s})·σ_s².
    """
    _check(lams)
    require(eta >= 0.0, f"eta must be >= 0, got {eta}")
    batch = z.shape[0]
    for i in _progress(len(lams) - 1, progress):
        lam_t, lam_s = lams[i], lams[i + 1]
        eps = denoiser(z, lam_t.expand(batch), c)
        x = eps_to_x(z, eps, lam_t)
        alpha_s, sigma_s = alpha_sigma(lam_s)
        if eta == 0.0:
            z = alpha_s * x + sigma_s * eps
        else:
            var_eta = eta**2 * (-torch.expm1(lam_t - lam_s)) * sigma_s**2
            z = alpha_s * x + (sigma_s**2 - var_eta).clamp_min(0).sqrt() * eps + var_eta.sqrt() * _noise(z, generator)
    return z


def sample_ancestral(
    denoiser: Denoiser,
    z: Tensor,
    lams: Tensor,
    c: Tensor,
    *,
    v: float = 0.3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """The CFG paper's ancestral sampler (Algorithm 2): z_s ~ N(μ̃_{s|t}(z_t, x̂), Σ) with
    Σ = (σ̃²_{s|t})^{1−v}·(σ²_{t|s})^v, interpolating between the posterior variance
    σ̃²_{s|t} = (1 − e^{λ_t−λ_s})σ_s² and the forward variance σ²_{t|s} = (1 − e^{λ_t−λ_s})σ_t².
    The last step returns the mean, without noise."""
    _check(lams)
    require(0.0 <= v <= 1.0, f"the variance exponent v must lie in [0, 1], got {v}")
    batch = z.shape[0]
    steps = len(lams) - 1
    for i in _progress(steps, progress):
        lam_t, lam_s = lams[i], lams[i + 1]
        eps = denoiser(z, lam_t.expand(batch), c)
        x = eps_to_x(z, eps, lam_t)
        mean, var_post = posterior(z, x, lam_t, lam_s)
        if i == steps - 1:
            z = mean
            continue
        _, sigma_t = alpha_sigma(lam_t)
        var_fwd = -torch.expm1(lam_t - lam_s) * sigma_t**2
        var = var_post ** (1.0 - v) * per_sample(var_fwd, z) ** v
        z = mean + var.sqrt() * _noise(z, generator)
    return z


SAMPLERS = {"ddim": sample_ddim, "ancestral": sample_ancestral}


def sample(
    denoiser: Denoiser,
    z: Tensor,
    lams: Tensor,
    c: Tensor,
    *,
    sampler: str = "ddim",
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options,
) -> Tensor:
    """Dispatch to a sampler by name ('ddim', 'ancestral')."""
    require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](denoiser, z, lams, c, generator=generator, progress=progress, **options)
