"""Noise schedules as maps u ↦ λ(u) from continuous time u ∈ [0, 1] to log-SNR λ = log(α²/σ²).

Every schedule is decreasing (λ(0) = λ_max, λ(1) = λ_min) and exposes ``lam(u)``, ``dlam_du(u)``
and ``u_of_lam(lam)``, so losses and samplers never ask which one they have.
Variance preserving throughout: α² = sigmoid(λ), σ² = sigmoid(−λ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from guidediff.errors import UsageError, require


def alpha_sigma(lam: Tensor) -> tuple[Tensor, Tensor]:
    """α_λ = sqrt(sigmoid(λ)), σ_λ = sqrt(sigmoid(−λ)) (variance preserving, α² + σ² = 1)."""
    # sigmoid in both directions keeps full relative precision at |λ| = 20, unlike 1 − sigmoid.
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def snr(lam: Tensor) -> Tensor:
    """Signal-to-noise ratio α²/σ² = exp(λ)."""
    return torch.exp(lam)


def _check_range(lam_min: float, lam_max: float) -> None:
    require(
        math.isfinite(lam_min) and math.isfinite(lam_max),
        f"lam_min={lam_min} and lam_max={lam_max} must be finite numbers",
    )
    require(
        lam_min < lam_max,
        f"lam_min ({lam_min}) must be smaller than lam_max ({lam_max}); swap them or pick another range",
    )


@dataclass(frozen=True)
class CFGSchedule:
    """The CFG paper's schedule λ(u) = −2·log tan(a·u + b) (Ho & Salimans 2022, §4).

    b = arctan(exp(−λ_max/2)) and a = arctan(exp(−λ_min/2)) − b, so λ(0) = λ_max and λ(1) = λ_min.
    It is the cosine schedule truncated to [λ_min, λ_max].

    ``shift`` s ≠ 1 is the shifted cosine of "simple diffusion" (Hoogeboom et al. 2023, §3.1):
    λ(u) = −2·log tan(a·u + b) + 2·log s, still truncated to [λ_min, λ_max] (s > 1 spends more
    of the u-interval at high SNR, as suits images smaller than 64×64; s = 64/d for side d).
    """

    lam_min: float = -20.0
    lam_max: float = 20.0
    name: str = "cfg"
    shift: float = 1.0

    def __post_init__(self) -> None:
        _check_range(self.lam_min, self.lam_max)
        require(math.isfinite(self.shift) and self.shift > 0,
                f"schedule shift must be a positive number (1 = no shift), got {self.shift}")

    @property
    def _offset(self) -> float:
        return 2.0 * math.log(self.shift)

    @property
    def _ab(self) -> tuple[float, float]:
        b = math.atan(math.exp(-(self.lam_max - self._offset) / 2))
        a = math.atan(math.exp(-(self.lam_min - self._offset) / 2)) - b
        return a, b

    def lam(self, u: Tensor) -> Tensor:
        a, b = self._ab
        lam = -2.0 * torch.log(torch.tan(a * u + b))
        # s = 1 must stay bit-identical to the unshifted schedule (old checkpoints sample the same)
        return lam + self._offset if self.shift != 1.0 else lam

    def dlam_du(self, u: Tensor) -> Tensor:
        a, b = self._ab
        # d/du[−2 log tan θ] = −2a/(sin θ cos θ) = −4a / sin 2θ
        return -4.0 * a / torch.sin(2.0 * (a * u + b))

    def u_of_lam(self, lam: Tensor) -> Tensor:
        a, b = self._ab
        return (torch.atan(torch.exp(-(lam - self._offset) / 2)) - b) / a


@dataclass(frozen=True)
class _AlphaBarSchedule:
    """A DDPM schedule given by log ᾱ(t), t ∈ [0, 1], truncated to λ ∈ [λ_min, λ_max].

    λ(t) = log ᾱ − log(1 − ᾱ); u ∈ [0, 1] is mapped linearly onto [t(λ_max), t(λ_min)].
    """

    lam_min: float
    lam_max: float

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def dlog_alpha_bar_dt(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_lam(self, lam: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_range(self) -> tuple[float, float]:
        ends = self.t_of_lam(torch.tensor([self.lam_max, self.lam_min], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def _lam_of_t(self, t: Tensor) -> Tensor:
        log_ab = self.log_alpha_bar(t)
        # 1 − ᾱ = −expm1(log ᾱ) keeps precision when ᾱ is close to 1 (high SNR).
        return log_ab - torch.log(-torch.expm1(log_ab))

    # Evaluated in float64 and cast back: near t = 0, 1 − ᾱ ≈ e^{−λ_max} is below float32 resolution.
    def lam(self, u: Tensor) -> Tensor:
        t0, t1 = self._t_range()
        return self._lam_of_t(t0 + (t1 - t0) * u.double()).to(u.dtype)

    def dlam_du(self, u: Tensor) -> Tensor:
        t0, t1 = self._t_range()
        t = t0 + (t1 - t0) * u.double()
        log_ab = self.log_alpha_bar(t)
        # dλ/dt = (log ᾱ)' / (1 − ᾱ)
        return (self.dlog_alpha_bar_dt(t) / (-torch.expm1(log_ab)) * (t1 - t0)).to(u.dtype)

    def u_of_lam(self, lam: Tensor) -> Tensor:
        t0, t1 = self._t_range()
        return ((self.t_of_lam(lam.double()) - t0) / (t1 - t0)).to(lam.dtype)


@dataclass(frozen=True)
class CosineSchedule(_AlphaBarSchedule):
    """Cosine DDPM schedule (Nichol & Dhariwal 2021, eq. 17): ᾱ(t) = cos²(θ(t))/cos²(θ(0)),
    θ(t) = (π/2)·(t + s)/(1 + s), expressed in λ and truncated to [λ_min, λ_max]."""

    lam_min: float = -20.0
    lam_max: float = 20.0
    s: float = 0.008
    name: str = "cosine"

    def __post_init__(self) -> None:
        _check_range(self.lam_min, self.lam_max)

    def _theta(self, t: Tensor) -> Tensor:
        return (math.pi / 2) * (t + self.s) / (1 + self.s)

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        cos0 = math.cos(math.pi / 2 * self.s / (1 + self.s))
        return 2 * torch.log(torch.cos(self._theta(t))) - 2 * math.log(cos0)

    def dlog_alpha_bar_dt(self, t: Tensor) -> Tensor:
        return -2 * torch.tan(self._theta(t)) * (math.pi / 2) / (1 + self.s)

    def t_of_lam(self, lam: Tensor) -> Tensor:
        # ᾱ = sigmoid(λ) ⇒ cos θ = cos θ0 · sqrt(sigmoid(λ))
        cos0 = math.cos(math.pi / 2 * self.s / (1 + self.s))
        theta = torch.acos(cos0 * torch.sigmoid(lam).sqrt())
        return theta * (1 + self.s) / (math.pi / 2) - self.s


@dataclass(frozen=True)
class LinearSchedule(_AlphaBarSchedule):
    """Linear-β DDPM schedule (Ho et al. 2020) in continuous time (Song et al. 2021, VP SDE):
    log ᾱ(t) = −β_min·t − ½(β_max − β_min)·t², with β_min = 0.1, β_max = 20 (DDPM's 1e-4…0.02 × 1000).

    Its natural range is λ ∈ [−10.05, +∞); the default λ_max = 9.21 is DDPM's first step (β_1 = 1e-4).
    """

    lam_min: float = -10.0
    lam_max: float = 9.21
    beta_min: float = 0.1
    beta_max: float = 20.0
    name: str = "linear"

    def __post_init__(self) -> None:
        _check_range(self.lam_min, self.lam_max)
        natural_min = float(self._lam_of_t(torch.tensor(1.0, dtype=torch.float64)))
        require(
            self.lam_min >= natural_min - 1e-9,
            f"the linear schedule reaches only lam_min={natural_min:.3f}; raise lam_min to at least that",
        )

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        return -self.beta_min * t - 0.5 * (self.beta_max - self.beta_min) * t * t

    def dlog_alpha_bar_dt(self, t: Tensor) -> Tensor:
        return -self.beta_min - (self.beta_max - self.beta_min) * t

    def t_of_lam(self, lam: Tensor) -> Tensor:
        # solve ½·d·t² + b·t + log ᾱ = 0 for t ≥ 0, with log ᾱ = log sigmoid(λ)
        d = self.beta_max - self.beta_min
        log_ab = torch.nn.functional.logsigmoid(lam)
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 2 * d * log_ab)) / d


Schedule = CFGSchedule | CosineSchedule | LinearSchedule

SCHEDULES = {"cfg": CFGSchedule, "cosine": CosineSchedule, "linear": LinearSchedule}


def make_schedule(name: str, lam_min: float | None = None, lam_max: float | None = None,
                  shift: float = 1.0) -> Schedule:
    """Build a schedule by name ('cfg', 'cosine', 'linear'); None keeps the schedule's default range.
    ``shift`` ≠ 1 (the shifted cosine, see CFGSchedule) exists for 'cfg' only."""
    if name not in SCHEDULES:
        raise UsageError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    kwargs: dict = {}
    if shift != 1.0:
        require(name == "cfg", f"schedule shift {shift} needs schedule 'cfg' (the shifted cosine), not {name!r}; "
                               "set diffusion.schedule = \"cfg\" or schedule_shift = 1")
        kwargs["shift"] = float(shift)
    if lam_min is not None:
        kwargs["lam_min"] = float(lam_min)
    if lam_max is not None:
        kwargs["lam_max"] = float(lam_max)
    return SCHEDULES[name](**kwargs)


def schedule_from_config(d) -> Schedule:
    """The schedule a DiffusionConfig names (its range and shift); one place for training and sampling."""
    return make_schedule(d.schedule, d.lam_min, d.lam_max, getattr(d, "schedule_shift", 1.0))


def schedule_of(config) -> Schedule:
    """The schedule a model's Config describes: the object it carries (an external model's, see
    guidediff.external), else the one its [diffusion] section names (``schedule_from_config``)."""
    own = getattr(config, "schedule", None)
    if own is not None:
        return own
    return schedule_from_config(config.diffusion)


GRIDS = ("u", "lambda", "karras")


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """EDM's step grid (Karras et al. 2022, eq. 5): σ_i = (σ_max^{1/ρ} + i/N·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,
    i = 0…N, decreasing, in float64."""
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _edm_sigma_ends(schedule: Schedule, sigma_max: float | None, sigma_min: float | None) -> tuple[float, float]:
    """(λ_lo, λ_hi): the grid's ends, λ = −2·log σ_edm for a given σ_edm = σ/α, else the schedule's
    own λ(1), λ(0). UsageError when a given σ_edm lies outside the schedule's range."""
    ends = schedule.lam(torch.tensor([1.0, 0.0], dtype=torch.float64)).detach()
    lam_lo, lam_hi = float(ends[0]), float(ends[1])
    top, bottom = math.exp(-lam_lo / 2), math.exp(-lam_hi / 2)  # σ/α at the noisy and the clean end
    for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        require(value is None or (isinstance(value, (int, float)) and math.isfinite(value) and value > 0),
                f"{name} must be a positive number (sigma/alpha, EDM's notation; EDM uses sigma_max=80) or left out, "
                f"got {value!r}")
    hi_edm = top if sigma_max is None else float(sigma_max)
    lo_edm = bottom if sigma_min is None else float(sigma_min)
    # a relative 1e-9 lets sigma_max = exp(10) name the start of a schedule at λ = −20 despite rounding
    allowed = f"({bottom:.4g}, {top:.6g}]"
    hint = ", e.g. EDM's 80" if bottom < 80.0 <= top else ""
    require(bottom < hi_edm <= top * (1 + 1e-9),
            f"sigma_max must lie in {allowed}, the sigma/alpha this schedule spans (clean end to its noisiest "
            f"point, lam={lam_lo:g}), got {hi_edm:g}; pick one inside{hint}, or leave it out")
    require(bottom * (1 - 1e-9) <= lo_edm < hi_edm,
            f"sigma_min must lie in [{bottom:.4g}, {hi_edm:.6g}) (the schedule's clean end up to the grid's "
            f"start), got {lo_edm:g}; pick one inside or leave it out")
    if sigma_max is not None:
        lam_lo = max(lam_lo, -2.0 * math.log(hi_edm))
    if sigma_min is not None:
        lam_hi = min(lam_hi, -2.0 * math.log(lo_edm))
    return lam_lo, lam_hi


def lam_grid(schedule: Schedule, steps: int, *, kind: str = "u", rho: float = 7.0, sigma_max: float | None = None,
             sigma_min: float | None = None, dtype=torch.float32, device=None) -> Tensor:
    """The sampling grid: steps + 1 increasing values of λ between the schedule's ends.

    ``kind="u"``: the schedule's own grid, λ(u) at u = 1, 1 − 1/steps, …, 0; a schedule with its own
    ``lam_grid`` (a discrete one, e.g. a diffusers scheduler's timesteps) chooses that grid itself.
    ``"lambda"``: uniform in λ (DPM-Solver's choice). ``"karras"``: EDM's ρ-grid (eq. 5) in
    σ_edm = σ/α = e^{−λ/2}, mapped back by λ = −2·log σ_edm; it crowds the steps at low noise.
    Both take the ends λ(1), λ(0) of the schedule, whatever its own grid.

    ``sigma_max`` (EDM's σ_max, in σ_edm = σ/α; EDM uses 80, i.e. λ = −8.76) starts the grid at
    λ = −2·log sigma_max instead of λ(1); None keeps the schedule's start (bit-identical grids).
    Beyond σ/α ≈ 80 a VP latent is noise to within α² ≈ 1.6e-4 of its variance, so a few-step
    grid gains nothing by spending steps there; the samplers still start from z ~ N(0, I), the VP
    marginal at λ_0 up to that α² (see ``generation.initial_noise``). ``sigma_min`` likewise ends the
    grid at λ = −2·log sigma_min (None: λ(0)). Each must lie inside the schedule's own σ_edm range.
    The u grid is truncated through the schedule's inverse: uniform in u between u(λ_start) and
    u(λ_end); a schedule that brings its own discrete grid (a diffusers scheduler's timesteps) has
    no such u grid, so there the truncation is refused (the lambda and karras grids take it)."""
    require(isinstance(steps, int) and steps >= 1, f"steps must be an integer >= 1, got {steps!r}")
    require(kind in GRIDS, f"unknown grid {kind!r}; choose one of {', '.join(GRIDS)}")
    truncated = sigma_max is not None or sigma_min is not None
    if kind == "u" and hasattr(schedule, "lam_grid"):
        require(not truncated, "sigma_max/sigma_min cannot truncate this model's own u grid (its scheduler's "
                               "timesteps); use the lambda or karras grid with them, or leave them out")
        return schedule.lam_grid(steps, dtype=dtype, device=device)
    if kind == "u" and not truncated:
        u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return schedule.lam(u).to(dtype=dtype, device=device)
    require(rho > 0, f"rho must be > 0, got {rho}")
    lam_min, lam_max = _edm_sigma_ends(schedule, sigma_max, sigma_min)
    if kind == "u":
        u_ends = schedule.u_of_lam(torch.tensor([lam_min, lam_max], dtype=torch.float64)).detach()
        lams = schedule.lam(torch.linspace(float(u_ends[0]), float(u_ends[1]), steps + 1,
                                           dtype=torch.float64)).detach().double()
    elif kind == "lambda":
        lams = torch.linspace(lam_min, lam_max, steps + 1, dtype=torch.float64)
    else:
        lams = -2.0 * torch.log(karras_sigmas(math.exp(-lam_max / 2), math.exp(-lam_min / 2), steps, rho))
    lams[0], lams[-1] = lam_min, lam_max  # exact ends, whatever the rounding of exp/log (or the inverse)
    return lams.to(dtype=dtype, device=device)
