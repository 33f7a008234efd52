"""EDM preconditioning (Karras et al. 2022, Table 1) in the project's variance-preserving λ terms.

EDM writes z = x + σ_e·n; ours is z_λ = α·x + σ·ε, the same point scaled by α with σ_e = σ/α =
exp(−λ/2). The raw network F sees c_in·z_e and the noise level; the denoised image is
D = c_skip·z_e + c_out·F, with z_e = z/α and

    c_skip = σ_d²/(σ_e² + σ_d²),  c_out = σ_e·σ_d/√(σ_e² + σ_d²),  c_in = 1/√(σ_e² + σ_d²),
    c_noise = ¼·ln σ_e = −λ/8.

The net keeps the project's contract (it embeds the raw λ, an affine function of EDM's c_noise,
so the embedding's frequencies still fit); ``preconditioned`` wraps it into a denoiser that returns
the configured prediction (ε by default) through the converters of ``diffusion``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import per_sample, v_from, x_to_eps
from guidediff.errors import require
from guidediff.schedules import alpha_sigma

PRECONDITIONINGS = ("none", "edm")


def edm_coefficients(lam: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 at σ_e = exp(−λ/2), in σ_e's units (z_e = z/α)."""
    sigma_e2 = torch.exp(-lam)
    total = sigma_e2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma_e2.sqrt() * sigma_data / total.sqrt()
    c_in = total.rsqrt()
    c_noise = -lam / 8
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(lam: Tensor, sigma_data: float) -> Tensor:
    """EDM's λ(σ) = (σ² + σ_d²)/(σ·σ_d)² (Karras et al. 2022, Table 1) for the x-loss ‖D − x‖²."""
    sigma_e2 = torch.exp(-lam)
    return (sigma_e2 + sigma_data**2) / (sigma_e2 * sigma_data**2)


def preconditioned(net: Callable[..., Tensor], sigma_data: float, prediction: str = "eps") -> Callable[..., Tensor]:
    """The denoiser (z, λ, c, *extra) -> prediction of the EDM-preconditioned raw net F (EDM eq. 7).
    ``extra`` (a distilled student's w) goes to F unchanged: only z is scaled.

    For ε the VP form below is used: with R = σ² + α²·σ_d² (= α²·(σ_e² + σ_d²)) the input is
    z/√R and ε̂ = (σ/R)·z − (α·σ_d/√R)·F, algebraically (z − α·D)/σ but without dividing by a tiny
    α or σ at the ends of the λ range. 'x' returns D itself and 'v' converts it.
    """
    require(sigma_data > 0, f"diffusion.sigma_data must be > 0, got {sigma_data}")
    require(prediction in ("eps", "x", "v"), f"unknown prediction {prediction!r}; use eps, x or v")

    def denoiser(z: Tensor, lam: Tensor, c: Tensor, *extra: Tensor) -> Tensor:
        # coefficients in float32 (or z's wider type) whatever autocast does to the net
        dtype = torch.promote_types(z.dtype, torch.float32)
        zf, lamf = z.to(dtype), lam.to(dtype)
        alpha, sigma = alpha_sigma(per_sample(lamf, zf))
        r = sigma**2 + alpha**2 * sigma_data**2
        raw = net((zf * r.rsqrt()).to(z.dtype), lam, c, *extra).to(dtype)
        if prediction == "eps":
            return (sigma / r) * zf - (alpha * sigma_data * r.rsqrt()) * raw
        c_skip, c_out, _, _ = (per_sample(t, zf) for t in edm_coefficients(lamf, sigma_data))
        x_hat = c_skip * zf / alpha + c_out * raw
        return x_hat if prediction == "x" else v_from(x_hat, x_to_eps(zf, x_hat, lamf), lamf)

    return denoiser


def wrap_for_config(net, diffusion_config):
    """``net`` as the config's denoiser: unchanged for precondition = "none" (every checkpoint made
    before the option existed), EDM-preconditioned for "edm". A w-conditioned ``net`` (a distilled
    student) stays one: its w passes through the preconditioning to the net."""
    kind = getattr(diffusion_config, "precondition", "none")
    require(kind in PRECONDITIONINGS, f"diffusion.precondition {kind!r} is unknown; choose none or edm")
    if kind == "none":
        return net
    return preconditioned(net, diffusion_config.sigma_data, "eps")
