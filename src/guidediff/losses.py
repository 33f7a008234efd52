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

from guidediff.diffusion import per_sample, q_sample
from guidediff.errors import UsageError, require


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
    lam_of_u: Callable[[Tensor], Tensor] | None = None,
    weight: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Continuous-time ε-prediction loss with condition dropout (CFG paper, Algorithm 1):
    E_{u, ε} ‖ε_θ(z_λ(u), λ(u), c̃) − ε‖², with c̃ = ∅ where ``noise.drop``. Mean over all elements.

    ``lam_of_u`` replaces the schedule's λ(u) as the map from the uniform u to the training λ (e.g.
    ``lognormal_lam``); ``weight(λ)`` multiplies each sample's squared error (``loss_weight``)."""
    # λ(u) in float64: −2·log tan(a·u + b) loses digits near u = 0 and u = 1 in float32.
    lam = (lam_of_u or schedule.lam)(noise.u.double()).to(x.dtype)
    eps = noise.eps.to(x.dtype)
    z = q_sample(x, lam, eps)
    eps_hat = net(z, lam, drop_condition(c, noise.drop, null_class))
    err = (eps_hat.float() - eps.float()).pow(2)
    if weight is None:
        return err.mean()
    return (per_sample(weight(lam.float()), err) * err).mean()


LOSS_WEIGHTS = ("eps", "edm", "min_snr", "v")
LAM_SAMPLINGS = ("schedule", "lognormal")


def loss_weight(kind: str, *, sigma_data: float = 0.5, gamma: float = 5.0) -> Callable[[Tensor], Tensor] | None:
    """The weight w(λ) of the ε-error ‖ε̂ − ε‖² that gives each objective (None: plain ε-loss).

    ‖x̂ − x‖² = e^{−λ}·‖ε̂ − ε‖² and ‖v̂ − v‖² = (1 + e^{−λ})·‖ε̂ − ε‖², so
    - "edm": EDM's λ(σ)·σ_e² = 1 + e^{−λ}/σ_d² (Karras et al. 2022, Table 1; unit weight on F);
    - "min_snr": min(SNR, γ)/SNR = min(1, γ·e^{−λ}) (Hang et al. 2023, eq. 8, ε-form);
    - "v": the v-loss, (SNR + 1)/SNR = 1 + e^{−λ} (Salimans & Ho 2022).
    """
    if kind == "eps":
        return None
    if kind == "edm":
        return lambda lam: 1.0 + torch.exp(-lam) / sigma_data**2
    if kind == "min_snr":
        return lambda lam: torch.clamp(gamma * torch.exp(-lam), max=1.0)
    if kind == "v":
        return lambda lam: 1.0 + torch.exp(-lam)
    raise UsageError(f"diffusion.loss_weight {kind!r} is unknown; choose one of {', '.join(LOSS_WEIGHTS)}")


def lognormal_lam(u: Tensor, p_mean: float, p_std: float, lam_min: float, lam_max: float) -> Tensor:
    """λ for uniform u when ln σ_e ~ N(P_mean, P_std²), σ_e = exp(−λ/2) (EDM's training noise,
    Karras et al. 2022, Table 1): λ = −2·(P_mean + P_std·Φ⁻¹(u)) ~ N(−2·P_mean, (2·P_std)²),
    clamped to the schedule's [λ_min, λ_max] (the range the sampler visits)."""
    normal = torch.erfinv(2.0 * u - 1.0) * (2.0**0.5)
    return (-2.0 * (p_mean + p_std * normal)).clamp(lam_min, lam_max)


def cfg_objective(d, null_class: int) -> Callable[[Callable, Tensor, Tensor, NoiseDraw], Tensor]:
    """The CFG training loss a DiffusionConfig describes, as ``objective(net, x, c, noise)``: the
    schedule, the λ sampling, the loss weight and the preconditioning (all neutral by default,
    which is exactly ``eps_loss`` on the raw net)."""
    from guidediff.precondition import wrap_for_config
    from guidediff.schedules import schedule_from_config

    schedule = schedule_from_config(d)
    sampling = getattr(d, "lam_sampling", "schedule")
    require(sampling in LAM_SAMPLINGS,
            f"diffusion.lam_sampling {sampling!r} is unknown; choose one of {', '.join(LAM_SAMPLINGS)}")
    lam_of_u = None
    if sampling == "lognormal":
        lo, hi = float(schedule.lam(torch.tensor(1.0, dtype=torch.float64))), \
            float(schedule.lam(torch.tensor(0.0, dtype=torch.float64)))
        lam_of_u = lambda u: lognormal_lam(u, d.p_mean, d.p_std, lo, hi)  # noqa: E731
    weight = loss_weight(getattr(d, "loss_weight", "eps"), sigma_data=getattr(d, "sigma_data", 0.5),
                         gamma=getattr(d, "min_snr_gamma", 5.0))

    def objective(net, x: Tensor, c: Tensor, noise: NoiseDraw) -> Tensor:
        return eps_loss(wrap_for_config(net, d), x, c, schedule, noise, null_class=null_class,
                        lam_of_u=lam_of_u, weight=weight)

    return objective
