"""What every sampler shares: the grid check, the x̂ prediction with clipping, noise, progress."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import eps_to_x, per_sample, x_to_eps
from guidediff.errors import require
from guidediff.samplers.registry import Option
from guidediff.schedules import alpha_sigma

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
# mean_shift(z_t, lam_t, c, var) -> a shift added to the ancestral step's mean (var = the step's Σ);
# how guidance enters the ancestral sampler without the sampler knowing about guidance.
MeanShift = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def check_grid(lams: Tensor) -> None:
    require(lams.dim() == 1 and lams.numel() >= 2, "lams must be a 1-D grid of at least 2 log-SNRs (steps >= 1)")
    from guidediff.cuda_graphs import capturing

    # a graph capture cannot read the grid on the host: its eager warm-up call checked it
    require(capturing() or bool((lams[1:] > lams[:-1]).all()), "lams must increase (from noisy λ_min to clean λ_max)")


def dynamic_threshold(x: Tensor, p: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): per sample s = max(1, the p-quantile
    of |x̂|), then x̂ ← clamp(x̂, −s, s)/s."""
    flat = x.reshape(x.shape[0], -1).abs()
    s = per_sample(torch.quantile(flat.float(), p, dim=1).to(x.dtype).clamp_min(1.0), x)
    return torch.maximum(torch.minimum(x, s), -s) / s


def predict(denoiser: Denoiser, z: Tensor, lam_t: Tensor, c: Tensor, clip_x: float | None,
            threshold: float | None = None) -> tuple[Tensor, Tensor]:
    """(x̂, ε̂) at λ_t. With ``clip_x``, x̂ is clamped to [−clip_x, clip_x] and ε̂ recomputed from it,
    so the update stays consistent (ADM's clip_denoised). At λ_min = −20, x̂ = (z − σ·ε̂)/α
    multiplies the network's ε-error by 1/α ≈ e^10; clipping to the data range stops that error
    from reaching the samples. ``threshold`` (a percentile p) applies Imagen's dynamic thresholding
    first: it rescales x̂ into [−1, 1] instead of saturating it."""
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
    return (sigma_s / sigma_t) * z - alpha_s * torch.expm1(-0.5 * (lam_s - lam_t)) * x


def noise(z: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


def steps_range(steps: int, progress: bool | None):
    """range(steps), with a progress bar when asked."""
    if not progress:
        return range(steps)
    from tqdm.auto import tqdm

    return tqdm(range(steps), desc="sampling", leave=False)


def positive_or_none(value) -> str | None:
    return None if value > 0 else f"must be > 0 (or left out), got {value}"


# clip_x: images live in [-1, 1]; see ``predict`` for why clipping matters at λ_min
CLIP_X_HELP = "clamp x̂ to [-clip_x, clip_x] at every step (None: no clipping)"


def _check_percentile(value) -> str | None:
    return None if 0.0 < value < 1.0 else f"is the percentile p of dynamic thresholding, in (0, 1) (Imagen: 0.995); got {value}"


THRESHOLD = Option("threshold", float, None, "Imagen's dynamic thresholding of x̂ at percentile p (None: off)",
                   check=_check_percentile)
CLIP_X = Option("clip_x", float, None, CLIP_X_HELP, check=positive_or_none)
LOWER_ORDER_FINAL = Option("lower_order_final", bool, True,
                           "first-order last step (it spans most of λ on a short grid)")
