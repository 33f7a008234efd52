"""The variance of VDM's bound estimator, and the schedule shape that minimises it (Kingma et al.
2021, §5 "the continuous-time loss is invariant to the noise schedule" and "variance minimisation").

With u ~ U[0, 1] the continuous-time diffusion term is estimated by L̂ = −½·λ'(u)·e(λ(u)),
e(λ) = ‖ε − ε̂(z_λ, λ)‖². Written over λ, whose density is p(λ) = 1/|λ'(u)|, it is L̂ = ½·e(λ)/p(λ):
the schedule's *shape* is an importance distribution over λ. It leaves E[L̂] unchanged for a given
denoiser ε̂(z, λ) (only the endpoints λ_min, λ_max matter, VDM eq. 20) and sets the variance,

    Var[L̂] = ∫ m(λ)/p(λ) dλ − E[L̂]²,    m(λ) = E[(½·e(λ))²],

smallest for p*(λ) ∝ √m(λ). VDM's learned schedule descends this variance by gradient; here the
same target is computed directly for a trained network (``variance_optimal_schedule``), so the
variance reduction can be measured on any ε-model conditioned on λ, fixed-schedule ones included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from guidediff.errors import require
from guidediff.vdm.bound import vlb_terms


@dataclass
class EstimatorVariance:
    """Per-example variance of K independent bound estimates, averaged over N examples (with a 95%
    interval over the examples), beside the variance of all N·K draws together (what a batch sees:
    the per-example part plus the spread of the examples' own bounds). Units: those of the draws
    squared (bits/dim² for draws in bits/dim)."""

    n: int
    k: int
    mean: float
    per_example_var: float
    per_example_var_ci95: float
    total_var: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def estimator_variance(draws: Tensor) -> EstimatorVariance:
    """Variance of a Monte-Carlo estimator from draws [N, K]: K independent estimates of each of N
    examples' bounds. Per-example variance uses K − 1 (unbiased); computed in float64."""
    require(draws.dim() == 2 and draws.shape[0] >= 2 and draws.shape[1] >= 2,
            f"need draws of shape [N >= 2, K >= 2], got {tuple(draws.shape)}; draw at least two estimates of "
            "at least two examples")
    d = draws.double()
    n, k = d.shape
    var_i = d.var(dim=1, unbiased=True)
    half = 1.96 * float(var_i.std(unbiased=True)) / math.sqrt(n)
    return EstimatorVariance(n=n, k=k, mean=float(d.mean()), per_example_var=float(var_i.mean()),
                             per_example_var_ci95=half, total_var=float(d.flatten().var(unbiased=True)))


@torch.no_grad()
def bound_draws(denoiser, x: Tensor, c: Tensor, schedule, k: int, *, seed: int = 0, T: int = 0,
                batch_size: int = 256) -> Tensor:
    """k independent one-sample estimates of each image's −VLB (nats) [N, k]: fresh u, ε, ε_0 per
    draw, from a CPU generator seeded with `seed` (so the result does not depend on batch_size).
    T = 0: continuous time, T ≥ 1: the discrete-time bound L_T."""
    require(k >= 1 and batch_size >= 1, f"need k >= 1 and batch_size >= 1, got {k} and {batch_size}")
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    u = torch.rand(k, n, generator=g, dtype=torch.float64)
    eps = torch.randn((k, *x.shape), generator=g)
    eps_0 = torch.randn((k, *x.shape), generator=g)
    xs, cs = x.repeat(k, *([1] * (x.dim() - 1))), c.repeat(k)
    u, eps, eps_0 = u.flatten(), eps.flatten(0, 1), eps_0.flatten(0, 1)
    out = []
    for start in range(0, n * k, batch_size):
        sl = slice(start, start + batch_size)
        terms = vlb_terms(denoiser, xs[sl], cs[sl], schedule, u[sl].to(x.device), eps[sl].to(x.device),
                          eps_0[sl].to(x.device), T=T)
        out.append(terms.total.double().cpu())
    return torch.cat(out).view(k, n).T


class PiecewiseLinearSchedule:
    """λ(u) linear between knots (u_j, λ_j), u_0 = 0 < … < u_J = 1, λ decreasing: the interface of
    guidediff.schedules (lam, dlam_du, lam_min, lam_max), so vlb_terms and the samplers take it."""

    def __init__(self, u_knots: Tensor, lam_knots: Tensor):
        u_knots, lam_knots = u_knots.double(), lam_knots.double()
        require(u_knots.dim() == 1 and u_knots.shape == lam_knots.shape and len(u_knots) >= 2,
                "u_knots and lam_knots must be 1-D of the same length >= 2")
        require(float(u_knots[0]) == 0.0 and float(u_knots[-1]) == 1.0 and bool((u_knots.diff() > 0).all()),
                "u_knots must rise strictly from 0 to 1")
        require(bool((lam_knots.diff() < 0).all()), "lam_knots must decrease strictly (λ(u) is decreasing)")
        self.u_knots, self.lam_knots = u_knots, lam_knots
        self.slopes = lam_knots.diff() / u_knots.diff()

    def _segment(self, u: Tensor) -> Tensor:
        knots = self.u_knots.to(u.device)
        return (torch.searchsorted(knots, u.double().contiguous(), right=True) - 1).clamp(0, len(knots) - 2)

    def lam(self, u: Tensor) -> Tensor:
        j = self._segment(u)
        u0, l0, s = (t.to(u.device)[j] for t in (self.u_knots, self.lam_knots, self.slopes))
        return (l0 + s * (u.double() - u0)).to(u.dtype)

    def dlam_du(self, u: Tensor) -> Tensor:
        return self.slopes.to(u.device)[self._segment(u)].to(u.dtype)

    @property
    def lam_max(self) -> float:
        return float(self.lam_knots[0])

    @property
    def lam_min(self) -> float:
        return float(self.lam_knots[-1])


def variance_optimal_schedule(lam_edges: Tensor, second_moment: Tensor, floor: float = 0.01) -> PiecewiseLinearSchedule:
    """The schedule whose λ-density is p*(λ) ∝ √m(λ) (VDM §5: the shape minimising Var[½·e/p]),
    piecewise constant on the bins lam_edges[j] > λ > lam_edges[j+1] with m given per bin.

    `floor` mixes in that share of the uniform-in-λ density so that no bin gets (near) zero mass:
    a bin that the pilot estimate of m underrates would otherwise blow the variance up."""
    edges, m = lam_edges.double(), second_moment.double()
    require(edges.dim() == 1 and m.shape == (len(edges) - 1,) and bool((edges.diff() < 0).all()),
            "lam_edges must decrease strictly and second_moment hold one value per bin")
    require(bool((m >= 0).all()) and float(m.sum()) > 0, "second_moment must be non-negative and not all zero")
    require(0 < floor < 1, f"floor must lie in (0, 1), got {floor}")
    width = -edges.diff()
    mass = m.sqrt() * width
    mass = (1 - floor) * mass / mass.sum() + floor * width / width.sum()
    u = torch.cat([torch.zeros(1, dtype=torch.float64), mass.cumsum(0)])
    u[-1] = 1.0
    return PiecewiseLinearSchedule(u, edges)


def optimal_step_probs(schedule, T: int, lam_edges: Tensor, second_moment: Tensor, floor: float = 0.01) -> Tensor:
    """Step probabilities q_i ∝ w_i·√m(λ_t(i)) for the discrete-time loss L_T, w_i = expm1(λ_s − λ_t):
    the importance distribution over steps that minimises the variance of ½·w_i·e/q_i (the same
    argument as variance_optimal_schedule), m read from the pilot bin holding λ_t(i); `floor`
    mixes in that share of the uniform distribution over steps."""
    require(T >= 1 and 0 < floor < 1, f"need T >= 1 and floor in (0, 1), got {T} and {floor}")
    u = torch.arange(T + 1, dtype=torch.float64) / T
    lam = schedule.lam(u).double()
    lam_s, lam_t = lam[:-1], lam[1:]
    edges = lam_edges.double()
    # bins are ordered by decreasing λ: bin j holds edges[j] ≥ λ > edges[j+1]
    j = (torch.searchsorted(-edges, -lam_t.contiguous(), right=False) - 1).clamp(0, len(edges) - 2)
    score = torch.expm1(lam_s - lam_t) * second_moment.double()[j].sqrt()
    require(float(score.sum()) > 0, "the pilot second moments are all zero; use more pilot images")
    return (1 - floor) * score / score.sum() + floor / T


def second_moment_of_shape(schedule, lam_edges: Tensor, second_moment: Tensor) -> float:
    """E[L̂²] of the continuous-time diffusion estimate under `schedule`, by quadrature on the pilot's
    m(λ) (piecewise constant on the bins): E[L̂²] = ∫ m(λ)/p(λ) dλ = ∫₀¹ m(λ(u))·λ'(u)² du.

    Sampling estimates of a heavy-tailed estimator's variance miss the rare large draws (a steep
    schedule end that u reaches once in 10⁵ draws); the quadrature does not. The u grid is uniform
    plus log-spaced towards both ends, where λ'(u) of a steep schedule concentrates."""
    edges = lam_edges.double()
    tail = torch.logspace(-14, -1, 4000, dtype=torch.float64)
    u = torch.cat([tail, torch.linspace(0, 1, 200_001, dtype=torch.float64), 1 - tail]).clamp(0, 1).unique()
    lam, dlam = schedule.lam(u).double(), schedule.dlam_du(u).double()
    j = (torch.searchsorted(-edges, -lam.contiguous(), right=False) - 1).clamp(0, len(edges) - 2)
    return float(torch.trapezoid(second_moment.double()[j] * dlam**2, u))


@torch.no_grad()
def second_moment_by_bin(denoiser, x: Tensor, c: Tensor, lam_edges: Tensor, *, seed: int = 0,
                         batch_size: int = 256) -> Tensor:
    """m(λ) = E[(½·e(λ))²] at each bin's midpoint λ, over the images x (one ε per image and bin):
    the pilot estimate that variance_optimal_schedule needs."""
    from guidediff.diffusion import q_sample

    g = torch.Generator().manual_seed(seed)
    mids = 0.5 * (lam_edges[:-1] + lam_edges[1:]).double()
    n, bins = x.shape[0], len(mids)
    lam = mids.repeat_interleave(n)
    xs, cs = x.repeat(bins, *([1] * (x.dim() - 1))), c.repeat(bins)
    eps = torch.randn(xs.shape, generator=g)
    out = []
    for start in range(0, n * bins, batch_size):
        sl = slice(start, start + batch_size)
        lam_b = lam[sl].to(device=x.device, dtype=x.dtype)
        e_b = eps[sl].to(x.device)
        eps_hat = denoiser(q_sample(xs[sl], lam_b, e_b), lam_b, cs[sl]).float()
        out.append((0.5 * (e_b - eps_hat).pow(2).flatten(1).sum(1)).double().pow(2).cpu())
    return torch.cat(out).view(bins, n).mean(1)


@torch.no_grad()
def pilot_importance_schedule(denoiser, schedule, x: Tensor, c: Tensor, *, bins: int = 32, floor: float = 0.05,
                              seed: int = 0, batch_size: int = 256) -> PiecewiseLinearSchedule:
    """The importance distribution over λ for the continuous-time bound of ``denoiser`` on
    ``schedule``'s endpoints: a pilot measures m(λ) on ``bins`` equal λ bins over the images x
    (``second_moment_by_bin``), and the shape p*(λ) ∝ √m (VDM §5, ``variance_optimal_schedule``)
    with ``floor`` of the uniform-in-λ density mixed in. Evaluated under it, L̂ = ½·e(λ)/p*(λ) has the
    same expectation as under ``schedule`` (the endpoints are the same, eq. 20) and a lower variance.

    The floor is larger than the benchmark's 1 %: a pilot of a few images can underrate a bin, and
    its weight 1/p* is then bounded by 1/floor times the uniform one."""
    require(bins >= 1, f"bins must be >= 1, got {bins}")
    edges = torch.linspace(float(schedule.lam_max), float(schedule.lam_min), bins + 1, dtype=torch.float64)
    m = second_moment_by_bin(denoiser, x, c, edges, seed=seed, batch_size=batch_size)
    return variance_optimal_schedule(edges, m, floor=floor)


__all__ = ["EstimatorVariance", "PiecewiseLinearSchedule", "bound_draws", "estimator_variance",
           "optimal_step_probs", "pilot_importance_schedule", "second_moment_by_bin", "second_moment_of_shape", "variance_optimal_schedule"]
