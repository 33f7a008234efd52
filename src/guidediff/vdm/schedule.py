"""VDM's learned noise schedule γ_η(t) = −λ(t) (Kingma et al. 2021, §3.4 and Appendix H).

γ̃(t) = l1(t) + l3(φ(l2(l1(t)))) is a small network whose weights are kept positive, so it is
monotone increasing in t; it is rescaled onto learnable endpoints,

    γ(t) = γ_0 + (γ_1 − γ_0) · s(t),    s(t) = (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)) ∈ [0, 1],

so γ(0) = γ_0 and γ(1) = γ_1 exactly, and SNR(t) = exp(−γ(t)). In the project's notation
λ(u) = −γ(u): the module has the interface of the fixed schedules in guidediff.schedules
(``lam``, ``dlam_du``, ``u_of_lam``), so losses, ``lam_grid`` and the samplers take it unchanged.

The *shape* s(t) and the *endpoints* (γ_0, γ_1) are kept apart because they are trained
differently (see ``guidediff.vdm.bound.diffusion_loss_continuous``): in continuous time the
expected diffusion loss depends on the endpoints only (VDM eq. 20), so the shape parameters are
free to minimise the variance of the loss estimator instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guidediff.errors import require


def _inv_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


@dataclass
class SchedulePoint:
    """λ(u) and dλ/du at a batch of times, plus the shape tensors (s, s') through which alone the
    shape parameters η enter; empty for a fixed schedule."""

    lam: Tensor
    dlam_du: Tensor
    shape: tuple[Tensor, ...] = ()


class LearnedSchedule(nn.Module):
    """γ_η(t) = −λ(t), a monotone network with learnable endpoints (VDM Appendix H).

    hidden: width of l2 (the paper's 1024). gamma_0, gamma_1: initial endpoints (the paper's
    −13.3 and 5.0, i.e. λ from 13.3 down to −5). γ_1 = γ_0 + softplus(gap) keeps them ordered.
    Evaluated in the dtype of ``u`` (float64 when given float64 times, as lam_grid and the losses
    do); the parameters stay float32 and receive gradients either way.
    """

    def __init__(self, hidden: int = 1024, gamma_0: float = -13.3, gamma_1: float = 5.0):
        super().__init__()
        require(hidden >= 1, f"the schedule network needs hidden >= 1 units, got {hidden}")
        require(math.isfinite(gamma_0) and math.isfinite(gamma_1) and gamma_0 < gamma_1,
                f"the schedule needs finite gamma_0 < gamma_1 (λ_max = −γ_0 > λ_min = −γ_1), got "
                f"gamma_0={gamma_0}, gamma_1={gamma_1}")
        self.hidden = hidden
        # Raw weights pass through softplus: positive, so γ̃ is increasing, and smooth, so no unit
        # ever gets stuck at a zero gradient the way abs() or clipping can leave it.
        self.w1 = nn.Parameter(torch.tensor(_inv_softplus(1.0)))
        self.b1 = nn.Parameter(torch.tensor(0.0))
        self.w2 = nn.Parameter(torch.randn(hidden) * 0.5)
        self.b2 = nn.Parameter(torch.randn(hidden) * 0.5)
        self.w3 = nn.Parameter(torch.randn(hidden) * 0.5)
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_0)))
        self.gap = nn.Parameter(torch.tensor(_inv_softplus(gamma_1 - gamma_0)))

    # -- the network ---------------------------------------------------------------------------
    def _weights(self, like: Tensor) -> tuple[Tensor, ...]:
        cast = lambda p: p.to(device=like.device, dtype=like.dtype)  # noqa: E731
        return (F.softplus(cast(self.w1)), cast(self.b1), F.softplus(cast(self.w2)), cast(self.b2),
                F.softplus(cast(self.w3)))

    def _raw(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ̃(t) and dγ̃/dt (unnormalised), elementwise over t of any shape."""
        w1, b1, w2, b2, w3 = self._weights(t)
        a = w1 * t + b1                                         # l1, 1 → 1
        h = torch.sigmoid(a[..., None] * w2 + b2)               # l2, 1 → hidden, sigmoid
        # l3 averages (1/hidden) so the non-linear part has the scale of l1 whatever the width.
        g = a + (h * w3).mean(-1)
        dg = w1 * (1.0 + (h * (1.0 - h) * w2 * w3).mean(-1))
        return g, dg

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """(γ_0, γ_1) as differentiable scalars."""
        return self.gamma_0, self.gamma_0 + F.softplus(self.gap)

    def shape(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """s(u) ∈ [0, 1] and s'(u) > 0: the normalised monotone part, depending on the shape
        parameters only."""
        # arange, not torch.tensor([0., 1.]): made on the device, with no host-to-device copy (a
        # copy from pageable memory synchronises, which a CUDA graph capture cannot contain)
        ends = torch.arange(2, dtype=u.dtype, device=u.device)
        g_ends, _ = self._raw(ends)
        g, dg = self._raw(u)
        span = g_ends[1] - g_ends[0]
        return (g - g_ends[0]) / span, dg / span

    def point(self, u: Tensor) -> SchedulePoint:
        """λ(u), dλ/du and the shape tensors (s, s'), all in u's dtype."""
        g0, g1 = (e.to(device=u.device, dtype=u.dtype) for e in self.endpoints())
        s, ds = self.shape(u)
        delta = g1 - g0
        return SchedulePoint(lam=-(g0 + delta * s), dlam_du=-delta * ds, shape=(s, ds))

    # -- the interface of the fixed schedules ----------------------------------------------------
    def lam(self, u: Tensor) -> Tensor:
        """λ(u) = −γ_η(u), decreasing from λ(0) = −γ_0 to λ(1) = −γ_1."""
        return self.point(u).lam

    def dlam_du(self, u: Tensor) -> Tensor:
        """dλ/du = −γ'_η(u) (analytic: the network is a composition of a few closed-form maps)."""
        return self.point(u).dlam_du

    @torch.no_grad()
    def u_of_lam(self, lam: Tensor, iterations: int = 60) -> Tensor:
        """u with λ(u) = lam, by bisection (λ is monotone); lam outside the range maps to 0 or 1.
        60 halvings reach float64 resolution; no gradient flows (it is meant for sampling grids)."""
        target = lam.double() if lam.dtype != torch.float64 else lam
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            # λ decreases in u: where λ(mid) is still above the target, the root lies to the right.
            right = self.lam(mid) > target
            lo = torch.where(right, mid, lo)
            hi = torch.where(right, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    @property
    def lam_max(self) -> float:
        """λ(0) = −γ_0 as a number (the fixed schedules' attribute)."""
        return -float(self.endpoints()[0])

    @property
    def lam_min(self) -> float:
        """λ(1) = −γ_1 as a number."""
        return -float(self.endpoints()[1])

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, lam=[{self.lam_min:.3f}, {self.lam_max:.3f}]"


# Kept out of torch.compile graphs: the shape tensors must be real (eager) tensors whose gradient
# is the full gradient from every use, so the variance hooks of vdm.bound see all of it. Inside a
# compiled graph they would be intermediates, and a hook on a graph output sees none of the uses
# that the graph itself made of them.
@torch.compiler.disable
def schedule_point(schedule, u: Tensor) -> SchedulePoint:
    """λ(u), dλ/du (and the shape tensors of a learned schedule) for any schedule object."""
    if isinstance(schedule, LearnedSchedule):
        return schedule.point(u)
    return SchedulePoint(lam=schedule.lam(u), dlam_du=schedule.dlam_du(u))


def lam_endpoints(schedule, like: Tensor) -> tuple[Tensor, Tensor]:
    """(λ(0), λ(1)) = (λ_max, λ_min) as tensors in like's dtype/device; differentiable for a learned
    schedule (the prior and reconstruction terms train the endpoints through these)."""
    if isinstance(schedule, LearnedSchedule):
        g0, g1 = schedule.endpoints()
        return (-g0).to(device=like.device, dtype=like.dtype), (-g1).to(device=like.device, dtype=like.dtype)
    # on like's device (no host-to-device copy inside a training step, see LearnedSchedule.shape)
    u = torch.arange(2, dtype=torch.float64, device=like.device)
    ends = schedule.lam(u).to(dtype=like.dtype)
    return ends[0], ends[1]
