"""DDGAN's discrete diffusion in log-SNR: T noise levels, the training pair (x_{t−1}, x_t) and the
generator's step x_{t−1} ~ q(x_{t−1} | x_t, x̂_0).

Xiao et al. (2022, §3 and App. C) use the variance-preserving SDE of Song et al. (2021) with
β(t) = β_min + t·(β_max − β_min), β_min = 0.1, β_max = 20, so
ᾱ(t) = exp(−β_min·t − ½(β_max − β_min)·t²) (the same curve as ``schedules.LinearSchedule``), read
at T + 1 levels. Level i ∈ {0, …, T} sits at t_i = i/T, so λ_i = log ᾱ(t_i) − log(1 − ᾱ(t_i)); level 0 is the data itself, λ_0 = +∞, where
α = 1 and σ = 0 and every formula below reduces exactly to x.

(The reference implementation shifts t_i to ε + (1 − ε)·i/T with ε = 10⁻³ and gives level 0 a
tiny β of 10⁻⁸; both change ᾱ by about 10⁻⁴, and we keep the exact grid t_i = i/T instead.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from guidediff.diffusion import per_sample, posterior
from guidediff.errors import require
from guidediff.schedules import alpha_sigma


def vp_log_alpha_bar(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """log ᾱ(t) = −β_min·t − ½(β_max − β_min)·t² of the VP SDE (Song et al. 2021, eq. 33)."""
    return -beta_min * t - 0.5 * (beta_max - beta_min) * t * t


@dataclass(frozen=True)
class DiscreteVP:
    """The T-step VP schedule of DDGAN, with levels i = 0 (data) … T (close to N(0, I))."""

    T: int
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        require(isinstance(self.T, int) and self.T >= 1, f"T must be an integer >= 1, got {self.T!r}")
        require(0.0 < self.beta_min < self.beta_max and math.isfinite(self.beta_max),
                f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")

    @classmethod
    def of(cls, diffusion) -> DiscreteVP:
        """The schedule a DDGAN config's diffusion section names (T, beta_min, beta_max)."""
        return cls(diffusion.T, diffusion.beta_min, diffusion.beta_max)

    def lams(self, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """λ_0 … λ_T (decreasing, λ_0 = +∞), computed in float64 and cast."""
        t = torch.arange(1, self.T + 1, dtype=torch.float64) / self.T
        log_ab = vp_log_alpha_bar(t, self.beta_min, self.beta_max)
        # 1 − ᾱ = −expm1(log ᾱ): exact when ᾱ is close to 1 (small t, large T).
        lam = log_ab - torch.log(-torch.expm1(log_ab))
        lam = torch.cat([torch.tensor([math.inf], dtype=torch.float64), lam])
        return lam.to(dtype=dtype, device=device)


def forward_pair(x0: Tensor, lam_s: Tensor, lam_t: Tensor, eps_s: Tensor, eps_t: Tensor) -> tuple[Tensor, Tensor]:
    """(x_s, x_t) ~ q(x_s | x_0)·q(x_t | x_s) for λ_s > λ_t, DDGAN's training pair (paper eq. 4's
    expectation over q(x_0)q(x_{t−1}|x_0)q(x_t|x_{t−1})):

    x_s = α_s·x_0 + σ_s·ε_s,   x_t = α_{t|s}·x_s + σ_{t|s}·ε_t,
    α_{t|s} = α_t/α_s,  σ²_{t|s} = σ_t² − α²_{t|s}σ_s² = σ_t²·(1 − e^{λ_t−λ_s})  (VDM eq. 3–4).
    """
    lam_s, lam_t = per_sample(lam_s, x0), per_sample(lam_t, x0)
    alpha_s, sigma_s = alpha_sigma(lam_s)
    alpha_t, sigma_t = alpha_sigma(lam_t)
    x_s = alpha_s * x0 + sigma_s * eps_s
    sigma_ts = sigma_t * (-torch.expm1(lam_t - lam_s)).sqrt()
    return x_s, (alpha_t / alpha_s) * x_s + sigma_ts * eps_t


def posterior_sample(x_t: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor, noise: Tensor) -> Tensor:
    """x_s = μ̃ + σ̃·noise, a draw from q(x_s | x_t, x_0) (DDGAN eq. 7 with x_0 = G(x_t, z, t));
    mean and variance from ``diffusion.posterior``. At λ_s = +∞ it returns x_0 exactly."""
    mean, var = posterior(x_t, x0, lam_t, lam_s)
    return mean + var.sqrt() * noise
