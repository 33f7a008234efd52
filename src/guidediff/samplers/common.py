"""What every sampler shares: the grid check, the x̂ prediction with clipping, noise, progress."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import eps_to_x, x_to_eps
from guidediff.errors import require

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
# mean_shift(z_t, lam_t, c, var) -> a shift added to the ancestral step's mean (var = the step's Σ);
# how guidance enters the ancestral sampler without the sampler knowing about guidance.
MeanShift = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def check_grid(lams: Tensor) -> None:
    require(lams.dim() == 1 and lams.numel() >= 2, "lams must be a 1-D grid of at least 2 log-SNRs (steps >= 1)")
    from guidediff.cuda_graphs import capturing

    # a graph capture cannot read the grid on the host: its eager warm-up call checked it
    require(capturing() or bool((lams[1:] > lams[:-1]).all()), "lams must increase (from noisy λ_min to clean λ_max)")


def predict(denoiser: Denoiser, z: Tensor, lam_t: Tensor, c: Tensor, clip_x: float | None) -> tuple[Tensor, Tensor]:
    """(x̂, ε̂) at λ_t. With ``clip_x``, x̂ is clamped to [−clip_x, clip_x] and ε̂ recomputed from it,
    so the update stays consistent (ADM's clip_denoised). At λ_min = −20, x̂ = (z − σ·ε̂)/α
    multiplies the network's ε-error by 1/α ≈ e^10; clipping to the data range stops that error
    from reaching the samples."""
    eps = denoiser(z, lam_t.expand(z.shape[0]), c)
    x = eps_to_x(z, eps, lam_t)
    if clip_x is not None:
        x = x.clamp(-clip_x, clip_x)
        eps = x_to_eps(z, x, lam_t)
    return x, eps


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
