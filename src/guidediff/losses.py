"""Training objectives.

The randomness of a training step (times u, noise ε, which labels are dropped) is drawn for the
whole global batch by ``draw_noise`` and sliced per process, so N data-parallel processes compute
exactly the loss that one process computes on the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import q_sample


@dataclass
class NoiseDraw:
    """The randomness of one ε-loss evaluation: u [B], ε [B, ...], drop [B] (bool)."""

    u: Tensor
    eps: Tensor
    drop: Tensor

    def slice(self, start: int, stop: int) -> "NoiseDraw":
        return NoiseDraw(self.u[start:stop], self.eps[start:stop], self.drop[start:stop])


def sample_u(batch: int, device=None, *, antithetic: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Uniform times u ∈ [0, 1); ``antithetic`` spreads them as u_i = (u_0 + i/B) mod 1, the VDM
    paper's low-discrepancy sampler, which lowers the variance of the loss estimate."""
    if antithetic:
        u0 = torch.rand((), generator=generator, device=device)
        return torch.remainder(u0 + torch.arange(batch, device=device) / batch, 1.0)
    return torch.rand(batch, generator=generator, device=device)


def draw_noise(
    batch: int,
    sample_shape: tuple[int, ...],
    *,
    p_uncond: float,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    device=None,
) -> NoiseDraw:
    """Draw u, ε and the label-dropout mask for a batch (CFG paper, Algorithm 1)."""
    u = sample_u(batch, device, antithetic=antithetic, generator=generator)
    eps = torch.randn((batch, *sample_shape), generator=generator, device=device)
    drop = torch.rand(batch, generator=generator, device=device) < p_uncond
    return NoiseDraw(u, eps, drop)


def drop_condition(c: Tensor, drop: Tensor, null_class: int) -> Tensor:
    """Labels with the dropped ones replaced by the null token ∅ = num_classes."""
    return torch.where(drop, torch.full_like(c, null_class), c)


def eps_loss(
    net: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    c: Tensor,
    schedule,
    noise: NoiseDraw,
    *,
    null_class: int,
) -> Tensor:
    """Continuous-time ε-prediction loss with condition dropout (CFG paper, Algorithm 1):
    E_{u, ε} ‖ε_θ(z_λ(u), λ(u), c̃) − ε‖², with c̃ = ∅ where ``noise.drop``. Mean over all elements."""
    # λ(u) in float64: −2·log tan(a·u + b) loses digits near u = 0 and u = 1 in float32.
    lam = schedule.lam(noise.u.double()).to(x.dtype)
    eps = noise.eps.to(x.dtype)
    z = q_sample(x, lam, eps)
    eps_hat = net(z, lam, drop_condition(c, noise.drop, null_class))
    return (eps_hat.float() - eps.float()).pow(2).mean()
