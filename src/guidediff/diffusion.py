"""The Gaussian diffusion process in log-SNR: forward q(z_λ|x), posterior q(z_s|z_t, x),
and converters between ε-, x- and v-predictions. Pure functions; λ is one value per sample."""

from __future__ import annotations

import torch
from torch import Tensor

from guidediff.schedules import alpha_sigma


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample values [B] (or a scalar) to broadcast against a batch `like` [B, ...]."""
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if values.dim() == 0:
        return values
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))


def q_sample(x: Tensor, lam: Tensor, eps: Tensor) -> Tensor:
    """z_λ = α_λ·x + σ_λ·ε, a draw from q(z_λ | x) (VDM eq. 1)."""
    alpha, sigma = alpha_sigma(per_sample(lam, x))
    return alpha * x + sigma * eps


def posterior(z_t: Tensor, x: Tensor, lam_t: Tensor, lam_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(z_s | z_t, x) for λ_s > λ_t (s less noisy), CFG paper eq. (3):

    μ̃ = e^{λ_t−λ_s}·(α_s/α_t)·z_t + (1 − e^{λ_t−λ_s})·α_s·x,   σ̃² = (1 − e^{λ_t−λ_s})·σ_s².
    """
    lam_t, lam_s = per_sample(lam_t, z_t), per_sample(lam_s, z_t)
    alpha_t, _ = alpha_sigma(lam_t)
    alpha_s, sigma_s = alpha_sigma(lam_s)
    ratio = torch.exp(lam_t - lam_s)
    # 1 − e^{λt−λs} via expm1: exact for the small λ gaps of fine grids.
    one_minus = -torch.expm1(lam_t - lam_s)
    mean = ratio * (alpha_s / alpha_t) * z_t + one_minus * alpha_s * x
    var = one_minus * sigma_s**2
    return mean, var


def eps_to_x(z: Tensor, eps: Tensor, lam: Tensor) -> Tensor:
    """x̂ = (z − σ·ε̂)/α."""
    alpha, sigma = alpha_sigma(per_sample(lam, z))
    return (z - sigma * eps) / alpha


def x_to_eps(z: Tensor, x: Tensor, lam: Tensor) -> Tensor:
    """ε̂ = (z − α·x̂)/σ."""
    alpha, sigma = alpha_sigma(per_sample(lam, z))
    return (z - alpha * x) / sigma


def v_from(x: Tensor, eps: Tensor, lam: Tensor) -> Tensor:
    """v = α·ε − σ·x (Salimans & Ho 2022)."""
    alpha, sigma = alpha_sigma(per_sample(lam, x))
    return alpha * eps - sigma * x


def v_to_x(z: Tensor, v: Tensor, lam: Tensor) -> Tensor:
    """x̂ = α·z − σ·v."""
    alpha, sigma = alpha_sigma(per_sample(lam, z))
    return alpha * z - sigma * v


def v_to_eps(z: Tensor, v: Tensor, lam: Tensor) -> Tensor:
    """ε̂ = σ·z + α·v."""
    alpha, sigma = alpha_sigma(per_sample(lam, z))
    return sigma * z + alpha * v


def to_eps(prediction: str, z: Tensor, output: Tensor, lam: Tensor) -> Tensor:
    """Turn a network output of the given parameterisation ('eps', 'x' or 'v') into ε̂."""
    if prediction == "eps":
        return output
    if prediction == "x":
        return x_to_eps(z, output, lam)
    if prediction == "v":
        return v_to_eps(z, output, lam)
    raise ValueError(f"unknown prediction type {prediction!r}; use eps, x or v")
