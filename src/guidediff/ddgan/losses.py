"""The adversarial objectives of DDGAN (Xiao et al. 2022, eq. 6 and App. B): the non-saturating
GAN loss for D and G, and the R1 gradient penalty on real pairs (Mescheder et al. 2018, eq. 9).
The same penalty on generated pairs is R2 (Mescheder et al. 2018, eq. 10), off by default."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """−log D(real) − log(1 − D(fake)) with D = sigmoid(logit): softplus(−ℓ_real) + softplus(ℓ_fake)."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def g_loss(d_fake: Tensor) -> Tensor:
    """Non-saturating generator loss −log D(fake) = softplus(−ℓ_fake) (Goodfellow et al. 2014, §3)."""
    return F.softplus(-d_fake).mean()


def r1_penalty(d_real: Tensor, x_real: Tensor, gamma: float) -> Tensor:
    """R1 = γ/2 · E‖∇_x D(x)‖² over real inputs x (Mescheder et al. 2018, eq. 9); over generated
    inputs the same expression is R2.

    ``d_real`` must come from ``x_real`` with requires_grad; the graph is kept (create_graph) so
    the penalty trains D. The gradient of the logits' sum is each sample's own gradient, since
    every logit depends on its own input only.
    """
    (grad,) = torch.autograd.grad(d_real.float().sum(), x_real, create_graph=True)
    return 0.5 * gamma * grad.float().pow(2).flatten(1).sum(1).mean()
