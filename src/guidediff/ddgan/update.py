"""One DDGAN training step (Xiao et al. 2022, Alg. 1): a discriminator update on a real pair
(x_{t−1}, x_t) from q and a fake x′_{t−1} drawn from G's x̂_0 through the posterior q(x_{t−1} | x_t, x̂_0),
then a generator update. ddgan.step runs it in the step modes, and ddgan.train's loop runs ddgan.step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from guidediff.ddgan.config import DDGANConfig
from guidediff.ddgan.losses import d_loss, g_loss, r1_penalty
from guidediff.ddgan.schedule import forward_pair, posterior_sample


class NonFiniteLoss(Exception):
    """A loss read on the host (finite_check "step") was NaN or infinite, before its update."""

    def __init__(self, what: str, value: float):
        super().__init__(what)
        self.what, self.value = what, value


@dataclass
class Nets:
    G: nn.Module  # raw modules (what checkpoints hold)
    D: nn.Module
    G_run: Callable  # possibly compiled forwards
    D_run: Callable
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def train_step(nets: Nets, x0: torch.Tensor, c: torch.Tensor | None, lams: torch.Tensor, config: DDGANConfig,
               g: torch.Generator, *, r1_step: bool, bf16: bool, sync: bool = True,
               autocast_cache: bool = True) -> dict[str, torch.Tensor]:
    """One D update and one G update on the batch x0.

    r1_step: add the R1 (and R2) penalty, weighted γ·r1_every (lazy regularisation, StyleGAN2 §4:
    the penalty on every k-th step only, k times as strong, so its average weight stays γ).
    sync: read each loss on the host and raise NonFiniteLoss before a bad update; without it the
    returned "finite" (a device bool) says whether both losses were finite, and nothing syncs.
    autocast_cache: autocast's cache of cast weights (off in a graph-ready step: a cached cast must
    not outlive a capture; the numbers are the same either way)."""
    t = config.train
    b, T, nz = x0.shape[0], config.diffusion.T, config.generator.nz
    dev = x0.device
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=autocast_cache)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=dev)

    i = torch.randint(1, T + 1, (b,), generator=g, device=dev)
    lam_t, lam_s = lams[i], lams[i - 1]
    x_s, x_t = forward_pair(x0, lam_s, lam_t, randn(*x0.shape), randn(*x0.shape))

    def fake(latent: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with autocast:
            x0_hat = nets.G_run(x_t, latent, lam_t, c)
        return posterior_sample(x_t, x0_hat.float(), lam_t, lam_s, noise)

    # -- discriminator
    nets.D.requires_grad_(True)
    if r1_step and t.r1_gamma > 0:
        # R1 needs ∇_x D in full precision, and double backward (no compiled D here).
        x_real = x_s.detach().requires_grad_(True)
        with torch.autocast(dev.type, enabled=False):
            d_real = nets.D(x_real, x_t, lam_t, c).float()
    else:
        with autocast:
            d_real = nets.D_run(x_s, x_t, lam_t, c).float()
    with torch.no_grad():
        x_fake = fake(randn(b, nz), randn(*x0.shape))
    r2_step = r1_step and t.r2_gamma > 0
    if r2_step:
        x_fake.requires_grad_(True)
        with torch.autocast(dev.type, enabled=False):
            d_fake = nets.D(x_fake, x_t, lam_t, c).float()
    else:
        with autocast:
            d_fake = nets.D_run(x_fake, x_t, lam_t, c).float()
    loss_d = d_loss(d_real, d_fake)
    zero = torch.zeros((), device=dev)
    r1 = r1_penalty(d_real, x_real, t.r1_gamma) * t.r1_every if r1_step and t.r1_gamma > 0 else zero
    r2 = r1_penalty(d_fake, x_fake, t.r2_gamma) * t.r1_every if r2_step else zero
    total_d = loss_d + r1 + r2
    _descend(nets.opt_d, total_d, "the discriminator loss", sync)

    # -- generator
    nets.D.requires_grad_(False)
    x_fake = fake(randn(b, nz), randn(*x0.shape))
    with autocast:
        d_gen = nets.D_run(x_fake, x_t, lam_t, c).float()
    loss_g = g_loss(d_gen)
    _descend(nets.opt_g, loss_g, "the generator loss", sync)
    nets.D.requires_grad_(True)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "r1": r1.detach(), "r2": r2.detach(),
            "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean(),
            "finite": torch.isfinite(total_d.detach()) & torch.isfinite(loss_g.detach())}


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor, what: str, sync: bool) -> None:
    """One optimizer step on ``loss``; with ``sync``, first a host read of it (finite_check "step":
    a NaN or infinite loss raises NonFiniteLoss before the update could spread it)."""
    if sync:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLoss(what, value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
