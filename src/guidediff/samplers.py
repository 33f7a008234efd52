"""Samplers: plain functions over a denoiser ``denoiser(z, lam, c) -> eps_hat`` and a grid of λ.

``lams`` holds steps + 1 increasing log-SNRs (from ``schedules.lam_grid``); each step evaluates
the denoiser once at lams[i] and moves z to lams[i+1]. Samplers know nothing about guidance.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import eps_to_x, per_sample, posterior, x_to_eps
from guidediff.errors import require
from guidediff.schedules import alpha_sigma

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
# mean_shift(z_t, lam_t, c, var) -> a shift added to the ancestral step's mean (var = the step's Σ);
# how guidance enters the ancestral sampler without the sampler knowing about guidance.
MeanShift = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def _check(lams: Tensor) -> None:
    require(lams.dim() == 1 and lams.numel() >= 2, "lams must be a 1-D grid of at least 2 log-SNRs (steps >= 1)")
    require(bool((lams[1:] > lams[:-1]).all()), "lams must increase (from noisy λ_min to clean λ_max)")


def dynamic_threshold(x: Tensor, p: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): per sample s = max(1, the p-quantile
    of |x̂|), then x̂ ← clamp(x̂, −s, s)/s."""
    flat = x.reshape(x.shape[0], -1).abs()
    s = torch.quantile(flat.float(), p, dim=1).to(x.dtype).clamp_min(1.0)
    s = per_sample(s, x)
    return torch.maximum(torch.minimum(x, s), -s) / s


def _check_x_options(clip_x: float | None, threshold: float | None) -> None:
    require(clip_x is None or clip_x > 0, f"clip_x must be > 0 (or None for no clipping), got {clip_x}")
    require(threshold is None or 0.0 < threshold < 1.0,
            f"threshold is the percentile p of dynamic thresholding and must lie in (0, 1) (Imagen: 0.995), got {threshold}")


def _predict(denoiser: Denoiser, z: Tensor, lam_t: Tensor, c: Tensor, clip_x: float | None,
             threshold: float | None = None) -> tuple[Tensor, Tensor]:
    """(x̂, ε̂) at λ_t. With ``clip_x``, x̂ is clamped to [−clip_x, clip_x] and ε̂ recomputed from it,
    so the update stays consistent (ADM's clip_denoised). At λ_min = −20, x̂ = (z − σ·ε̂)/α
    multiplies the network's ε-error by 1/α ≈ e^10; clipping to the data range stops that error
    from reaching the samples. ``threshold`` (a percentile p) applies Imagen's dynamic thresholding
    first; it keeps x̂ in [−1, 1] like clipping but rescales instead of saturating."""
    eps = denoiser(z, lam_t.expand(z.shape[0]), c)
    x = eps_to_x(z, eps, lam_t)
    if threshold is not None:
        x = dynamic_threshold(x, threshold)
    if clip_x is not None:
        x = x.clamp(-clip_x, clip_x)
    if threshold is not None or clip_x is not None:
        eps = x_to_eps(z, x, lam_t)
    return x, eps


def data_step(z: Tensor, x: Tensor, lam_t: Tensor, lam_s: Tensor) -> Tensor:
    """First-order step in data prediction from λ_t to λ_s (DPM-Solver++, Lu et al. 2022, eq. 9):
    z_s = (σ_s/σ_t)·z_t + α_s·(1 − e^{−h})·x, with h = (λ_s − λ_t)/2 in DPM-Solver's half log-SNR.
    With x = x̂ it is exactly DDIM (η = 0); multistep solvers pass a corrected x."""
    alpha_s, sigma_s = alpha_sigma(lam_s)
    _, sigma_t = alpha_sigma(lam_t)
    h = 0.5 * (lam_s - lam_t)
    return (sigma_s / sigma_t) * z - alpha_s * torch.expm1(-h) * x


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
    clip_x: float | None = None,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) in log-SNR. η = 0 is the deterministic probability-flow
    sampler; η = 1 draws from the posterior q(z_s|z_t, x̂) as DDPM does.

    z_s = α_s·x̂ + sqrt(σ_s² − σ_η²)·ε̂ + σ_η·ξ, with σ_η² = η²·(1 − e^{λ_t−λ_s})·σ_s².
    """
    _check(lams)
    _check_x_options(clip_x, threshold)
    require(eta >= 0.0, f"eta must be >= 0, got {eta}")
    for i in _progress(len(lams) - 1, progress):
        lam_t, lam_s = lams[i], lams[i + 1]
        x, eps = _predict(denoiser, z, lam_t, c, clip_x, threshold)
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
    _check(lams)
    require(0.0 <= v <= 1.0, f"the variance exponent v must lie in [0, 1], got {v}")
    steps = len(lams) - 1
    for i in _progress(steps, progress):
        lam_t, lam_s = lams[i], lams[i + 1]
        x, _ = _predict(denoiser, z, lam_t, c, clip_x)
        mean, var_post = posterior(z, x, lam_t, lam_s)
        _, sigma_t = alpha_sigma(lam_t)
        var_fwd = -torch.expm1(lam_t - lam_s) * sigma_t**2
        var = var_post ** (1.0 - v) * per_sample(var_fwd, z) ** v
        if mean_shift is not None:
            mean = mean + mean_shift(z, lam_t, c, var)
        if i == steps - 1:
            z = mean
            continue
        z = mean + var.sqrt() * _noise(z, generator)
    return z


SAMPLERS = {"ddim": sample_ddim, "ancestral": sample_ancestral}

# the fast ODE solvers use the helpers above, so they are registered after them
from guidediff.fast_samplers import dpmpp_2m, heun, unipc  # noqa: E402

SAMPLERS.update({"dpmpp-2m": dpmpp_2m.sample_dpmpp_2m, "heun": heun.sample_heun, "unipc": unipc.sample_unipc})


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
    """Dispatch to a sampler by name (a key of SAMPLERS)."""
    require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](denoiser, z, lams, c, generator=generator, progress=progress, **options)
