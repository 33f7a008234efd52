"""Guidance as pure wrappers: each takes a denoiser and returns a denoiser.

A denoiser is any callable ``denoiser(z, lam, c) -> eps_hat`` (z [B, ...], λ [B], class index c [B],
the null token being index ``num_classes``). Guidance knows nothing about samplers.

Guidance weight w follows the CFG paper: ε̃ = (1+w)·ε(z,c) − w·ε(z,∅); w = 0 is the conditional
model, w = −1 the unconditional one. (diffusers' ``guidance_scale`` is s = 1 + w.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import per_sample
from guidediff.errors import require
from guidediff.schedules import alpha_sigma

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
GradLogProb = Callable[[Tensor, Tensor, Tensor], Tensor]


class CountingDenoiser:
    """Wraps a network and counts what it costs: ``calls`` (forward passes) and ``evaluations``
    (samples pushed through the network). NFE per image = evaluations / images sampled; a batched
    CFG forward of 2B rows counts 2 per image, because that is the work done."""

    def __init__(self, net: Denoiser):
        self.net = net
        self.calls = 0
        self.evaluations = 0

    def __call__(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        self.calls += 1
        self.evaluations += z.shape[0]
        return self.net(z, lam, c)

    def nfe_per_image(self, images: int) -> float:
        return self.evaluations / max(images, 1)


def _weights(w: float | Tensor, batch: int, device, dtype) -> Tensor:
    w = torch.as_tensor(w, dtype=dtype, device=device)
    require(bool(torch.isfinite(w).all()), f"guidance weight w must be finite, got {w.tolist()}")
    return w.expand(batch) if w.dim() == 0 else w


def cfg(denoiser: Denoiser, w: float | Tensor, null_class: int) -> Denoiser:
    """Classifier-free guidance, CFG paper eq. (6): ε̃ = (1+w)·ε(z,c) − w·ε(z,∅).

    Conditional and unconditional rows go through ONE batched forward. ``w`` is a number or one
    weight per sample. A scalar w = 0 (conditional) or w = −1 (unconditional) needs one forward only.
    """
    if not torch.is_tensor(w):
        require(math.isfinite(float(w)), f"guidance weight w must be finite, got {w}")
        if float(w) == 0.0:
            return denoiser
        if float(w) == -1.0:
            return unconditional(denoiser, null_class)

    def guided(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        batch = z.shape[0]
        weight = per_sample(_weights(w, batch, z.device, z.dtype), z)
        null = torch.full_like(c, null_class)
        eps = denoiser(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, null]))
        eps_cond, eps_uncond = eps[:batch], eps[batch:]
        return eps_cond + weight * (eps_cond - eps_uncond)

    return guided


def unconditional(denoiser: Denoiser, null_class: int) -> Denoiser:
    """The same network asked for the unconditional prediction ε(z, ∅), whatever class is passed."""

    def uncond(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        return denoiser(z, lam, torch.full_like(c, null_class))

    return uncond


def classifier_guidance(denoiser: Denoiser, grad_log_prob: GradLogProb, scale: float | Tensor) -> Denoiser:
    """Classifier guidance in score form (Dhariwal & Nichol 2021, Algorithm 2; CFG paper eq. 4):
    ε̃ = ε(z[,c]) − s·σ_λ·∇_z log p(c | z_λ).

    ``grad_log_prob(z, lam, c)`` returns ∇_z log p(c | z) (see ``classifier_gradient``). On an
    unconditional denoiser with exact scores, s = w + 1 equals CFG with weight w.
    """

    def guided(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        eps = denoiser(z, lam, c)
        _, sigma = alpha_sigma(per_sample(lam, z))
        s = per_sample(_weights(scale, z.shape[0], z.device, z.dtype), z)
        return eps - s * sigma * grad_log_prob(z, lam, c)

    return guided


def classifier_gradient(log_prob: Callable[[Tensor, Tensor, Tensor], Tensor]) -> GradLogProb:
    """∇_z log p(c | z, λ) by autograd from ``log_prob(z, lam, c) -> [B]`` (e.g. a noisy
    classifier's log-softmax at c). Works inside samplers that run under no_grad; the graph is
    freed before returning, so nothing leaks across steps."""

    def grad(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        with torch.enable_grad():
            z_in = z.detach().requires_grad_(True)
            total = log_prob(z_in, lam, c).sum()
            (g,) = torch.autograd.grad(total, z_in)
        return g.detach()

    return grad
