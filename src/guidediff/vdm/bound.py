"""The variational bound of a VDM (Kingma et al. 2021), term by term, per image, in nats.

    −log p(x) ≤ KL(q(z_1|x) ‖ p(z_1))  +  E_q(z_0|x)[−log p(x|z_0)]  +  L_T(x)
                 prior                    reconstruction              diffusion

(VDM §3, "the variational lower bound"). Everything here is a pure function of tensors, a
denoiser ``(z, lam, c) -> eps_hat`` and a schedule u ↦ λ(u); the arithmetic runs in float32 or
float64 whatever the caller's autocast says, only the denoiser call may run in bf16.

Data convention: 8-bit images map to the grid x_k = 2k/255 − 1, k = 0…255 (guidediff's
x = v/127.5 − 1 everywhere), the paper's (k/255)·2 − 1; the grid spacing is 2/255.
Notation: λ = log SNR = −γ, α² = sigmoid(λ), σ² = sigmoid(−λ); u ∈ [0, 1] is the paper's t.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from guidediff.diffusion import q_sample
from guidediff.vdm.schedule import lam_endpoints, schedule_point

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
LN2 = math.log(2.0)
BINS = 256


def _sum_dims(t: Tensor) -> Tensor:
    """Sum over every axis but the batch axis: per-image totals [B]."""
    return t.flatten(1).sum(1)


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def grid_values(bins: int = BINS, device=None, dtype=torch.float32) -> Tensor:
    """The data grid x_k = 2k/(bins − 1) − 1, k = 0 … bins−1 (x = v/127.5 − 1 for 8 bits)."""
    return torch.arange(bins, device=device, dtype=dtype) * (2.0 / (bins - 1)) - 1.0


# -- prior ------------------------------------------------------------------------------------------

def prior_loss(x: Tensor, lam_1: Tensor) -> Tensor:
    """KL(q(z_1|x) ‖ N(0, I)) per image (VDM §3, prior term), with q(z_1|x) = N(α_1 x, σ_1² I).

    Per dimension ½(σ² + α²x² − 1 − log σ²) = ½(α²(x² − 1) + softplus(λ_1)): written with
    log σ² = −softplus(λ) so it stays accurate when α_1² is tiny (≈ e^λ_1)."""
    lam_1 = torch.as_tensor(lam_1, dtype=x.dtype, device=x.device)
    alpha2 = torch.sigmoid(lam_1)
    return 0.5 * _sum_dims(alpha2 * (x * x - 1.0) + F.softplus(lam_1))


# -- reconstruction --------------------------------------------------------------------------------

def decoder_logits(z_0: Tensor, lam_0: Tensor, bins: int = BINS) -> Tensor:
    """Logits of VDM's factorised decoder p(x_i | z_0,i) over the data grid (VDM §3, "p(x|z_0)"):
    −(z_0/α_0 − x_k)² / (2σ_0²/α_0²) = −½·SNR_0·(z_0/α_0 − x_k)², shape [..., bins]."""
    lam_0 = torch.as_tensor(lam_0, dtype=z_0.dtype, device=z_0.device)
    alpha_0 = torch.sigmoid(lam_0).sqrt()
    x_hat = z_0 / alpha_0
    grid = grid_values(bins, device=z_0.device, dtype=z_0.dtype)
    return -0.5 * torch.exp(lam_0) * (x_hat.unsqueeze(-1) - grid) ** 2


def data_indices(x: Tensor, bins: int = BINS) -> Tensor:
    """Grid index k of each value of x (x = 2k/(bins−1) − 1, rounded to the nearest k)."""
    return ((x + 1.0) * ((bins - 1) / 2.0)).round().clamp(0, bins - 1).long()


def reconstruction_loss(x: Tensor, z_0: Tensor, lam_0: Tensor, bins: int = BINS) -> Tensor:
    """−log p(x | z_0) per image under the discretised factorised decoder (VDM §3): a softmax over
    the `bins` grid values per dimension. Evaluated at one draw z_0 ~ q(z_0|x), it is an unbiased
    estimate of the reconstruction term E_q(z_0|x)[−log p(x|z_0)]."""
    logp = torch.log_softmax(decoder_logits(z_0, lam_0, bins), dim=-1)
    k = data_indices(x, bins)
    return -_sum_dims(logp.gather(-1, k.unsqueeze(-1)).squeeze(-1))


def gaussian_reconstruction_loss(x: Tensor, z_0: Tensor, lam_0: Tensor) -> Tensor:
    """−log N(x; z_0/α_0, σ_0²/α_0²) per image: the decoder for *continuous* data (a density, so
    the total is an upper bound on −log p(x) for real-valued x, e.g. in the Gaussian test)."""
    lam_0 = torch.as_tensor(lam_0, dtype=z_0.dtype, device=z_0.device)
    alpha_0 = torch.sigmoid(lam_0).sqrt()
    var = torch.exp(-lam_0)  # σ_0²/α_0² = 1/SNR_0
    return 0.5 * _sum_dims((x - z_0 / alpha_0) ** 2 / var + torch.log(2 * math.pi * var))


# -- diffusion --------------------------------------------------------------------------------------

def snr_ratio_minus_one(lam_s: Tensor, lam_t: Tensor) -> Tensor:
    """SNR(s)/SNR(t) − 1 = exp(γ(t) − γ(s)) − 1 = expm1(λ_s − λ_t), the discrete-time weight (VDM §4).

    expm1, not exp(·) − 1: for a fine grid λ_s − λ_t is tiny and exp(·) − 1 would keep only the
    few digits of 1 + (λ_s − λ_t) that float32 can hold; expm1 keeps full relative precision."""
    return torch.expm1(lam_s - lam_t)


@torch.compiler.disable
def _route_variance_gradient(shape: tuple[Tensor, ...], loss: Tensor) -> None:
    """Make the schedule's shape parameters η receive ∇_η of the estimator's variance instead of
    ∇_η of the loss (VDM §5, "variance minimisation").

    Why this is allowed: in continuous time E[L_∞] depends on the schedule only through its
    endpoints, so ∇_η E[L] = 0 for the shape and the shape is free to lower Var[L], which speeds
    up training. ∇_η E[L²] = E[2L·∇_η L]; with a baseline, Σ_i 2(L_i − L̄)·∇_η L_i estimates
    ∇_η Var[L] with less noise. The shape enters sample i only through the scalars s(u_i), s'(u_i),
    so the gradient of the mean loss arriving there, (1/B)·∂L_i/∂s_i, is multiplied by
    2(L_i − L̄)/L̄ in the backward pass: one backward serves both objectives (the denoiser and the
    endpoints still get the gradient of the bound). Dividing by L̄ makes it ∇ of Var/E[L], a
    dimensionless scale like that of the bound, so global gradient clipping treats both alike.

    The hooks are registered after the forward (when the L_i are known); they fire during backward.
    """
    loss = loss.detach().float()
    mean = loss.mean().clamp_min(1e-12)
    scale = 2.0 * (loss - mean) / mean
    for tensor in shape:
        if tensor.requires_grad:
            tensor.register_hook(lambda g, k=scale: g * k.to(g.dtype).reshape(g.shape))


def _eps_error(denoiser: Denoiser, x: Tensor, c: Tensor, lam: Tensor, eps: Tensor) -> Tensor:
    """‖ε − ε̂(z_λ, λ, c)‖² per image; only the denoiser call runs under the caller's autocast."""
    z = q_sample(x, lam, eps)
    eps_hat = denoiser(z, lam, c)
    with _no_autocast(x.device):
        return _sum_dims((eps - eps_hat.float()) ** 2)


def diffusion_loss_continuous(
    denoiser: Denoiser,
    x: Tensor,
    c: Tensor,
    schedule,
    u: Tensor,
    eps: Tensor,
    *,
    variance_grad: bool = False,
) -> Tensor:
    """L_∞ per image (VDM §5, T → ∞): ½·γ'(u)·‖ε − ε̂(z_u; u)‖² = −½·λ'(u)·‖ε − ε̂‖², a one-sample
    Monte-Carlo estimate of ½∫₀¹ γ'(u) E‖ε − ε̂‖² du at the given times u [B] and noise ε.

    λ(u) and λ'(u) are computed in float64 (λ near the ends of [0, 1] needs the digits), the
    network sees λ in x's dtype. ``variance_grad``: a learned schedule's shape parameters get the
    gradient of the estimator's variance (see ``_route_variance_gradient``)."""
    with _no_autocast(x.device):
        point = schedule_point(schedule, u.to(torch.float64))
        lam = point.lam.to(x.dtype)
        weight = (-0.5 * point.dlam_du).to(torch.float32)
    err = _eps_error(denoiser, x, c, lam, eps)
    with _no_autocast(x.device):
        loss = weight * err
    if variance_grad and point.shape and torch.is_grad_enabled():
        _route_variance_gradient(point.shape, loss)
    return loss


def discrete_steps(u: Tensor, T: int) -> tuple[Tensor, Tensor]:
    """Map u ∈ [0, 1) onto step i = ⌊u·T⌋ + 1 ∈ {1…T}; returns (t(i), s(i)) = (i/T, (i−1)/T)."""
    i = torch.floor(u.to(torch.float64) * T).clamp(0, T - 1) + 1
    return i / T, (i - 1) / T


def diffusion_loss_discrete(
    denoiser: Denoiser,
    x: Tensor,
    c: Tensor,
    schedule,
    u: Tensor,
    eps: Tensor,
    T: int,
    step_probs: Tensor | None = None,
) -> Tensor:
    """L_T per image (VDM §4): (T/2)·(exp(γ(t) − γ(s)) − 1)·‖ε − ε̂(z_t; t)‖², with step
    i = ⌊u·T⌋ + 1, t = i/T, s = (i−1)/T: a one-sample estimate of Σ_i E[KL(q(z_s|z_t,x) ‖ p(z_s|z_t))].

    The weight is expm1(λ_s − λ_t) (see ``snr_ratio_minus_one``), from λ in float64. No variance
    routing here: with finitely many steps the schedule's shape changes E[L_T] itself, so a
    learned shape must follow the bound's gradient.

    step_probs [T]: draw step i with probability q_i (inverse CDF at u) and weight by 1/(T·q_i)
    instead of 1 — importance sampling over the steps, the same expectation L_T, a lower variance
    when q_i follows the steps' contributions (guidediff.vdm.variance.optimal_step_probs)."""
    if T < 1:
        raise ValueError(f"the number of steps T must be >= 1, got {T}")
    with _no_autocast(x.device):
        if step_probs is None:
            t, s = discrete_steps(u, T)
            scale = torch.full_like(t, 0.5 * T)
        else:
            q = step_probs.to(device=u.device, dtype=torch.float64)
            i = torch.searchsorted(q.cumsum(0), u.to(torch.float64).contiguous(), right=True).clamp(0, T - 1)
            t, s, scale = (i + 1).double() / T, i.double() / T, 0.5 / q[i]
        p_t, p_s = schedule_point(schedule, t), schedule_point(schedule, s)
        lam_t = p_t.lam.to(x.dtype)
        weight = (scale * snr_ratio_minus_one(p_s.lam, p_t.lam)).to(torch.float32)
    err = _eps_error(denoiser, x, c, lam_t, eps)
    with _no_autocast(x.device):
        loss = weight * err
    return loss


# -- the whole bound --------------------------------------------------------------------------------

class BoundTerms(NamedTuple):
    """The three terms of −VLB(x) per image [B], in nats. A NamedTuple, so DDP and Accelerate
    see the tensors inside a model's output."""

    prior: Tensor
    reconstruction: Tensor
    diffusion: Tensor

    @property
    def total(self) -> Tensor:
        return self.prior + self.reconstruction + self.diffusion


def vlb_terms(
    denoiser: Denoiser,
    x: Tensor,
    c: Tensor,
    schedule,
    u: Tensor,
    eps: Tensor,
    eps_0: Tensor,
    *,
    T: int = 0,
    discretised: bool = True,
    variance_grad: bool = False,
) -> BoundTerms:
    """−VLB(x) = prior + reconstruction + diffusion per image, in nats (VDM §3).

    u [B]: times for the diffusion term; eps: its noise; eps_0: the noise of z_0 ~ q(z_0|x) for
    the reconstruction term. T = 0 is continuous time (L_∞), T ≥ 1 the discrete-time L_T.
    discretised: the 8-bit decoder (images); False: the Gaussian decoder (continuous data).
    variance_grad: the variance routing of the continuous-time loss (ignored for T ≥ 1)."""
    x = x.float()
    with _no_autocast(x.device):
        lam_0, lam_1 = lam_endpoints(schedule, x)
        prior = prior_loss(x, lam_1)
        z_0 = q_sample(x, lam_0.expand(x.shape[0]), eps_0.float())
        recon = reconstruction_loss(x, z_0, lam_0) if discretised else gaussian_reconstruction_loss(x, z_0, lam_0)
    if T:
        diff = diffusion_loss_discrete(denoiser, x, c, schedule, u, eps.float(), T)
    else:
        diff = diffusion_loss_continuous(denoiser, x, c, schedule, u, eps.float(), variance_grad=variance_grad)
    return BoundTerms(prior=prior, reconstruction=recon, diffusion=diff)


def bits_per_dim(nats: Tensor | float, dims: int) -> Tensor | float:
    """nats per image → bits per dimension: nats / (D·ln 2)."""
    return nats / (dims * LN2)


def dims_of(x: Tensor) -> int:
    """D, the number of dimensions of one image."""
    return int(x[0].numel())


__all__ = [
    "BINS", "LN2", "BoundTerms", "bits_per_dim", "data_indices", "decoder_logits", "diffusion_loss_continuous",
    "diffusion_loss_discrete", "dims_of", "discrete_steps", "gaussian_reconstruction_loss", "grid_values",
    "prior_loss", "reconstruction_loss", "snr_ratio_minus_one", "vlb_terms",
]
