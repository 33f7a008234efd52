"""VDM's two estimator claims: the discrete-time bound against T (closed form for Gaussian data)
and the variance of the bound estimate under schedule shapes (guidediff.vdm.variance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guidediff.schedules import CFGSchedule
from guidediff.vdm.bound import diffusion_loss_continuous, diffusion_loss_discrete
from guidediff.vdm.variance import (
    PiecewiseLinearSchedule,
    bound_draws,
    estimator_variance,
    second_moment_by_bin,
    second_moment_of_shape,
    variance_optimal_schedule,
)


def test_estimator_variance_matches_numpy_float64():
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(7, 5)) * np.arange(1, 8)[:, None] + 3.0
    v = estimator_variance(torch.tensor(draws, dtype=torch.float32))
    var_i = draws.var(axis=1, ddof=1)
    assert v.n == 7 and v.k == 5
    assert v.per_example_var == pytest.approx(var_i.mean(), rel=1e-6)
    assert v.per_example_var_ci95 == pytest.approx(1.96 * var_i.std(ddof=1) / math.sqrt(7), rel=1e-6)
    assert v.total_var == pytest.approx(draws.var(ddof=1), rel=1e-6)
    assert v.mean == pytest.approx(draws.mean(), rel=1e-6)


def test_estimator_variance_needs_two_by_two():
    from guidediff.errors import UsageError

    with pytest.raises(UsageError, match=r"\[N >= 2, K >= 2\]"):
        estimator_variance(torch.zeros(5, 1))


def test_piecewise_linear_schedule_interpolates_with_slopes():
    s = PiecewiseLinearSchedule(torch.tensor([0.0, 0.25, 1.0]), torch.tensor([10.0, 0.0, -6.0]))
    u = torch.tensor([0.0, 0.125, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.lam(u), torch.tensor([10.0, 5.0, 0.0, -2.0, -6.0], dtype=torch.float64))
    torch.testing.assert_close(s.dlam_du(u[1:4]), torch.tensor([-40.0, -8.0, -8.0], dtype=torch.float64))
    assert (s.lam_max, s.lam_min) == (10.0, -6.0)


def test_optimal_shape_has_density_proportional_to_root_m():
    edges = torch.tensor([8.0, 4.0, 0.0, -2.0, -8.0], dtype=torch.float64)
    m = torch.tensor([4.0, 1.0, 9.0, 0.25], dtype=torch.float64)
    s = variance_optimal_schedule(edges, m, floor=0.1)
    width = -edges.diff()
    density = 0.9 * m.sqrt() / (m.sqrt() * width).sum() + 0.1 / width.sum()
    mids = (s.u_knots[:-1] + s.u_knots[1:]) / 2
    # p(λ) = 1/|dλ/du| on each bin
    torch.testing.assert_close(-1.0 / s.dlam_du(mids), density)
    torch.testing.assert_close(s.lam(s.u_knots), edges)


def _deterministic_error(f):
    """Data x = 0 and ε̂ = z/σ − √(f(λ)/D): then z = σε and ‖ε − ε̂‖² = f(λ) exactly."""

    def denoiser(z, lam, c):
        sigma = torch.sigmoid(-lam.double()).sqrt().view(-1, 1, 1, 1)
        dims = z[0].numel()
        return (z.double() / sigma - (f(lam.double()) / dims).sqrt().view(-1, 1, 1, 1)).to(z.dtype)

    return denoiser


def test_optimal_shape_removes_the_variance_of_a_deterministic_integrand():
    """With ‖ε − ε̂‖² = f(λ) fixed, importance sampling with p ∝ f is exact up to the bins; every
    shape has the same mean ½∫f dλ (VDM eq. 20), the cfg shape has a large variance."""
    f = lambda lam: 3.0 + 2.0 * torch.tanh(lam / 3.0) + torch.exp(-((lam - 4.0) ** 2))  # noqa: E731
    den = _deterministic_error(f)
    lam_max, lam_min = 10.0, -10.0
    edges = torch.linspace(lam_max, lam_min, 201, dtype=torch.float64)
    x = torch.zeros(4, 1, 3, 3, dtype=torch.float64)
    c = torch.zeros(4, dtype=torch.long)
    m = second_moment_by_bin(den, x, c, edges)
    grid = torch.linspace(lam_min, lam_max, 20001, dtype=torch.float64)
    exact = 0.5 * float(torch.trapezoid(f(grid), grid))
    n = 4000
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    xs, cs, eps = torch.zeros(n, 1, 3, 3, dtype=torch.float64), torch.zeros(n, dtype=torch.long), torch.randn(n, 1, 3, 3, generator=g, dtype=torch.float64)
    shapes = {"optimal": variance_optimal_schedule(edges, m, floor=1e-3), "cfg": CFGSchedule(lam_min, lam_max),
              "linear": PiecewiseLinearSchedule(torch.tensor([0.0, 1.0]), torch.tensor([lam_max, lam_min]))}
    var = {}
    for name, schedule in shapes.items():
        loss = diffusion_loss_continuous(den, xs, cs, schedule, u, eps).double()
        se = float(loss.std()) / math.sqrt(n)
        assert abs(float(loss.mean()) - exact) < 4 * se + 1e-3 * exact, name
        var[name] = float(loss.var())
        # the quadrature on the pilot's m predicts the sampled second moment
        predicted, sq = second_moment_of_shape(schedule, edges, m), loss.pow(2)
        assert abs(predicted - float(sq.mean())) < 4 * float(sq.std()) / math.sqrt(n) + 0.02 * predicted, name
    assert var["optimal"] < 1e-3 * var["linear"] and var["linear"] < var["cfg"]


def test_bound_draws_shape_independence_and_batch_invariance():
    den = _deterministic_error(lambda lam: 1.0 + torch.sigmoid(lam))
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    c = torch.zeros(3, dtype=torch.long)
    schedule = CFGSchedule(-8.0, 8.0)
    a = bound_draws(den, x, c, schedule, 5, seed=1, batch_size=4)
    b = bound_draws(den, x, c, schedule, 5, seed=1, batch_size=15)
    assert a.shape == (3, 5)
    torch.testing.assert_close(a, b)
    assert float(a.std(dim=1).min()) > 0  # the draws differ


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_discrete_bound_of_gaussian_data_matches_its_closed_form_and_shrinks_to_continuous(T):
    """x ~ N(0, s²), the exact (MMSE) denoiser. E[L_T] = ½·Σ_i (SNR_s − SNR_t)·mmse(SNR_t), mmse(v) =
    s²/(1 + v·s²) per dimension (VDM §4: ‖ε − ε̂‖² = SNR_t‖x − x̂‖²): an upper Riemann sum of the
    decreasing mmse over SNR, so L_T ≥ L_2T ≥ … ≥ L_∞ = ½·log((1 + SNR_max s²)/(1 + SNR_min s²))."""
    s2 = 0.5
    lam_min, lam_max = -6.0, 6.0
    schedule = CFGSchedule(lam_min, lam_max)

    def exact(z, lam, c):
        lam = lam.double().view(-1, 1, 1, 1)
        a2, sig2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        return (sig2.sqrt() * z.double() / (a2 * s2 + sig2)).to(z.dtype)

    def closed_form(steps: int) -> float:
        lam = schedule.lam(torch.arange(steps + 1, dtype=torch.float64) / steps)
        snr = lam.exp()
        return float(0.5 * ((snr[:-1] - snr[1:]) * s2 / (1 + snr[1:] * s2)).sum())

    l_inf = 0.5 * math.log((1 + math.exp(lam_max) * s2) / (1 + math.exp(lam_min) * s2))
    assert closed_form(T) > closed_form(2 * T) > l_inf  # the claim, in closed form

    per_step = max(20, 20_000 // T)  # every step, each with many (x, ε)
    g = torch.Generator().manual_seed(T)
    u = ((torch.arange(T, dtype=torch.float64) + 0.5) / T).repeat_interleave(per_step)
    n = u.numel()
    x = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * math.sqrt(s2)
    eps = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    loss = diffusion_loss_discrete(exact, x, torch.zeros(n, dtype=torch.long), schedule, u, eps, T).double()
    se = float(loss.std()) / math.sqrt(n)
    assert abs(float(loss.mean()) - closed_form(T)) < 4 * se
    assert se < 0.05 * closed_form(T)  # the comparison above has teeth


def test_step_importance_sampling_keeps_the_discrete_bound():
    """diffusion_loss_discrete with step_probs: uniform q is the plain estimator draw for draw; a
    skewed q (the optimal one from a pilot) has the same expectation, the closed form, and a
    lower variance."""
    from guidediff.vdm.variance import optimal_step_probs

    s2, T = 0.5, 50
    schedule = CFGSchedule(-6.0, 6.0)

    def exact(z, lam, c):
        lam = lam.double().view(-1, 1, 1, 1)
        a2, sig2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        return (sig2.sqrt() * z.double() / (a2 * s2 + sig2)).to(z.dtype)

    lam = schedule.lam(torch.arange(T + 1, dtype=torch.float64) / T)
    snr = lam.exp()
    closed = float(0.5 * ((snr[:-1] - snr[1:]) * s2 / (1 + snr[1:] * s2)).sum())
    n = 40_000
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * math.sqrt(s2)
    eps = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    c = torch.zeros(n, dtype=torch.long)
    plain = diffusion_loss_discrete(exact, x, c, schedule, u, eps, T).double()
    uniform = diffusion_loss_discrete(exact, x, c, schedule, u, eps, T, step_probs=torch.full((T,), 1.0 / T)).double()
    torch.testing.assert_close(uniform, plain, rtol=1e-6, atol=0)  # the weight is rounded to float32
    edges = torch.linspace(6.0, -6.0, 25, dtype=torch.float64)
    m = second_moment_by_bin(exact, x[:200], c[:200], edges)
    q = optimal_step_probs(schedule, T, edges, m)
    assert q.shape == (T,) and abs(float(q.sum()) - 1) < 1e-12
    weighted = diffusion_loss_discrete(exact, x, c, schedule, u, eps, T, step_probs=q).double()
    for loss in (plain, weighted):
        assert abs(float(loss.mean()) - closed) < 4 * float(loss.std()) / math.sqrt(n)
    assert float(weighted.var()) < 0.5 * float(plain.var())
