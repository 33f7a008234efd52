"""Properties of the core: schedules, diffusion process, guidance wrappers, losses.

Every check compares against an independent reference: a float64 recomputation, autograd,
the Gaussian conditioning of a joint written out by hand, or two separate calls."""

from __future__ import annotations

import math

import pytest
import torch

from guidediff import diffusion, guidance, losses, samplers, schedules
from guidediff.errors import UsageError
from guidediff.nets.mlp import MLPConfig, MLPDenoiser

NAMES = ["cfg", "cosine", "linear"]


def _u(n: int = 1001, dtype=torch.float64) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n, dtype=dtype)


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", NAMES)
def test_schedule_monotone_and_endpoints(name):
    s = schedules.make_schedule(name)
    lam = s.lam(_u())
    assert bool((lam[1:] < lam[:-1]).all()), "λ(u) must decrease strictly"
    # 1e-6: the cosine schedule's t(λ) is ill-conditioned at λ = 20 (1 − ᾱ ≈ 2e-9), even in float64
    assert float(lam[0]) == pytest.approx(s.lam_max, abs=1e-6)
    assert float(lam[-1]) == pytest.approx(s.lam_min, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_custom_range_endpoints(name):
    s = schedules.make_schedule(name, -5.0, 7.0)
    ends = s.lam(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.tolist() == pytest.approx([7.0, -5.0], abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_sigma_variance_preserving(name):
    lam = schedules.make_schedule(name).lam(_u())
    alpha, sigma = schedules.alpha_sigma(lam)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(schedules.snr(lam), alpha**2 / sigma**2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_float32_matches_float64(name):
    s = schedules.make_schedule(name)
    u = _u()
    lam64, lam32 = s.lam(u), s.lam(u.float())
    assert lam32.dtype == torch.float32
    inner = (u >= 0.02) & (u <= 0.98)
    torch.testing.assert_close(lam32[inner].double(), lam64[inner], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "cfg",
        "cosine",
        "linear",
    ],
)
def test_schedule_float32_full_range(name):
    # The ends (tan near π/2, ᾱ near 1) lose digits in float32; the loss and lam_grid evaluate λ(u)
    # in float64 for that reason. A float32 caller still gets λ to 2e-3 everywhere.
    s = schedules.make_schedule(name)
    u = _u()
    torch.testing.assert_close(s.lam(u.float()).double(), s.lam(u), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_dlam_du_matches_autograd(name):
    s = schedules.make_schedule(name)
    u = torch.linspace(0.001, 0.999, 301, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(s.lam(u).sum(), u)
    torch.testing.assert_close(s.dlam_du(u.detach()), grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_u_of_lam_inverts_lam(name):
    s = schedules.make_schedule(name)
    u = _u(501)
    torch.testing.assert_close(s.u_of_lam(s.lam(u)), u, atol=1e-7, rtol=0)


def test_make_schedule_errors():
    with pytest.raises(UsageError, match="unknown schedule"):
        schedules.make_schedule("quadratic")
    for name in NAMES:
        with pytest.raises(UsageError, match="lam_min"):
            schedules.make_schedule(name, lam_min=5.0, lam_max=1.0)
        with pytest.raises(UsageError, match="lam_min"):
            schedules.make_schedule(name, lam_min=2.0, lam_max=2.0)
        with pytest.raises(UsageError):
            schedules.make_schedule(name, lam_min=float("nan"))


def test_lam_grid_shape_and_order():
    s = schedules.make_schedule("cfg")
    lams = schedules.lam_grid(s, 10, dtype=torch.float64)
    assert lams.shape == (11,)
    assert bool((lams[1:] > lams[:-1]).all())
    assert float(lams[0]) == pytest.approx(-20.0, abs=1e-8) and float(lams[-1]) == pytest.approx(20.0, abs=1e-8)
    with pytest.raises(UsageError, match="steps"):
        schedules.lam_grid(s, 0)


# ----------------------------------------------------------------------------- diffusion
def test_posterior_equals_gaussian_conditioning_of_the_joint():
    """q(z_s | z_t, x) from conditioning the joint of (z_s, z_t) given x, written out in float64:
    z_s = α_s x + σ_s ε₁, z_t = α_{t|s} z_s + σ_{t|s} ε₂ with α_{t|s} = α_t/α_s, σ²_{t|s} = σ_t² − α²_{t|s}σ_s²."""
    g = torch.Generator().manual_seed(0)
    b = 64
    lam_t = torch.empty(b, dtype=torch.float64).uniform_(-12, 8, generator=g)
    lam_s = lam_t + torch.empty(b, dtype=torch.float64).uniform_(0.01, 6, generator=g)
    x = torch.randn(b, 3, dtype=torch.float64, generator=g)
    z_t = torch.randn(b, 3, dtype=torch.float64, generator=g)
    a_t, a_s = torch.sigmoid(lam_t).sqrt(), torch.sigmoid(lam_s).sqrt()
    v_t, v_s = torch.sigmoid(-lam_t), torch.sigmoid(-lam_s)
    a_ts = a_t / a_s
    cov_st = a_ts * v_s  # Cov(z_s, z_t | x)
    mean_ref = a_s[:, None] * x + (cov_st / v_t)[:, None] * (z_t - a_t[:, None] * x)
    var_ref = v_s - cov_st**2 / v_t
    mean, var = diffusion.posterior(z_t, x, lam_t, lam_s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(var.reshape(-1), var_ref, rtol=1e-9, atol=1e-12)


def test_q_sample_is_alpha_x_plus_sigma_eps():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64)
    lam = torch.linspace(-3, 3, 5, dtype=torch.float64)
    z = diffusion.q_sample(x, lam, eps)
    ref = torch.stack([math.sqrt(1 / (1 + math.exp(-l))) * x[i] + math.sqrt(1 / (1 + math.exp(l))) * eps[i] for i, l in enumerate(lam.tolist())])
    torch.testing.assert_close(z, ref, rtol=1e-12, atol=1e-12)


def test_prediction_round_trips():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 3, dtype=torch.float64, generator=g)
    eps = torch.randn(16, 3, dtype=torch.float64, generator=g)
    lam = torch.linspace(-10, 10, 16, dtype=torch.float64)
    z = diffusion.q_sample(x, lam, eps)
    torch.testing.assert_close(diffusion.eps_to_x(z, eps, lam), x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(diffusion.x_to_eps(z, x, lam), eps, rtol=1e-8, atol=1e-8)
    # ε → x → ε through the converters alone
    torch.testing.assert_close(diffusion.x_to_eps(z, diffusion.eps_to_x(z, eps, lam), lam), eps, rtol=1e-8, atol=1e-8)
    v = diffusion.v_from(x, eps, lam)
    torch.testing.assert_close(diffusion.v_to_x(z, v, lam), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(diffusion.v_to_eps(z, v, lam), eps, rtol=1e-10, atol=1e-10)
    for kind, output in (("eps", eps), ("x", x), ("v", v)):
        torch.testing.assert_close(diffusion.to_eps(kind, z, output, lam), eps, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError):
        diffusion.to_eps("score", z, eps, lam)


# ----------------------------------------------------------------------------- guidance
def _net(num_classes: int = 3) -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(MLPConfig(num_classes=num_classes, hidden=32, depth=2)).double().eval()


def test_batched_cfg_equals_two_separate_calls():
    net = _net()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 2, dtype=torch.float64, generator=g)
    lam = torch.linspace(-5, 5, 12, dtype=torch.float64)
    c = torch.arange(12) % 3
    null = torch.full_like(c, 3)
    with torch.no_grad():
        cond, uncond = net(z, lam, c), net(z, lam, null)
        for w in (-1.0, 0.0, 0.5, 3.0):
            torch.testing.assert_close(guidance.cfg(net, w, 3)(z, lam, c), (1 + w) * cond - w * uncond, rtol=1e-12, atol=1e-12)
        w = torch.linspace(-1, 4, 12, dtype=torch.float64)  # one weight per sample
        ref = (1 + w[:, None]) * cond - w[:, None] * uncond
        torch.testing.assert_close(guidance.cfg(net, w, 3)(z, lam, c), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(guidance.unconditional(net, 3)(z, lam, c), uncond)
    with pytest.raises(UsageError):
        guidance.cfg(net, float("inf"), 3)


def test_counting_denoiser_nfe():
    net = _net()
    b, steps = 5, 4
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), steps, dtype=torch.float64)
    z = torch.randn(b, 2, dtype=torch.float64)
    c = torch.zeros(b, dtype=torch.int64)
    for w, per_image in ((2.0, 2), (0.0, 1), (torch.full((b,), 1.5, dtype=torch.float64), 2)):
        counter = guidance.CountingDenoiser(net)
        with torch.no_grad():
            samplers.sample_ddim(guidance.cfg(counter, w, 3), z, lams, c)
        assert counter.evaluations == per_image * b * steps
        assert counter.calls == steps
        assert counter.nfe_per_image(b) == per_image * steps


def test_classifier_guidance_formula():
    net = _net()
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 2, dtype=torch.float64, generator=g)
    lam = torch.linspace(-4, 4, 6, dtype=torch.float64)
    c = torch.arange(6) % 3
    grad = torch.randn(6, 2, dtype=torch.float64, generator=g)
    s = torch.linspace(0, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        out = guidance.classifier_guidance(net, lambda *_: grad, s)(z, lam, c)
        ref = net(z, lam, c) - s[:, None] * torch.sigmoid(-lam).sqrt()[:, None] * grad
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_classifier_gradient_is_autograd_under_no_grad():
    weights = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]], dtype=torch.float64)

    def log_prob(z, lam, c):
        logits = z @ weights.T * torch.sigmoid(lam)[:, None]
        return torch.log_softmax(logits, dim=1).gather(1, c[:, None])[:, 0]

    z = torch.randn(7, 2, dtype=torch.float64)
    lam = torch.linspace(-2, 2, 7, dtype=torch.float64)
    c = torch.arange(7) % 3
    with torch.no_grad():
        grad = guidance.classifier_gradient(log_prob)(z, lam, c)
    # d/dz log softmax_c(Wz·a) = a·(W_c − Σ_k p_k W_k)
    a = torch.sigmoid(lam)[:, None]
    p = torch.softmax(z @ weights.T * a, dim=1)
    ref = a * (weights[c] - p @ weights)
    torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- losses
def test_draw_noise_slices_are_the_global_batch():
    g = torch.Generator().manual_seed(5)
    full = losses.draw_noise(12, (2,), p_uncond=0.3, generator=g)
    parts = [full.slice(i, i + 4) for i in range(0, 12, 4)]
    torch.testing.assert_close(torch.cat([p.u for p in parts]), full.u)
    torch.testing.assert_close(torch.cat([p.eps for p in parts]), full.eps)
    assert torch.equal(torch.cat([p.drop for p in parts]), full.drop)
    # the same seed gives the same draw: every process can draw the global batch and slice it
    again = losses.draw_noise(12, (2,), p_uncond=0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.u, full.u) and torch.equal(again.eps, full.eps) and torch.equal(again.drop, full.drop)
    # equal slices: the mean of the per-process losses is the global loss
    net = _net().float()
    x = torch.randn(12, 2)
    c = torch.arange(12) % 3
    s = schedules.make_schedule("cfg")
    with torch.no_grad():
        whole = losses.eps_loss(net, x, c, s, full, null_class=3)
        pieces = [losses.eps_loss(net, x[i : i + 4], c[i : i + 4], s, full.slice(i, i + 4), null_class=3) for i in range(0, 12, 4)]
    assert float(whole) == pytest.approx(float(torch.stack(pieces).mean()), rel=1e-6)


def test_eps_loss_is_zero_for_the_true_eps():
    """A net that recovers ε from z, x and λ (closure over x): z must be α·x + σ·ε at the λ it is given."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 2, dtype=torch.float64, generator=g)
    c = torch.zeros(64, dtype=torch.int64)
    noise = losses.draw_noise(64, (2,), p_uncond=0.2, generator=g)
    s = schedules.make_schedule("cfg", -8.0, 8.0)

    def oracle(z, lam, c_in):
        alpha, sigma = schedules.alpha_sigma(lam)
        return (z - alpha[:, None] * x) / sigma[:, None]

    assert float(losses.eps_loss(oracle, x, c, s, noise, null_class=3)) < 1e-16
    wrong = lambda z, lam, c_in: oracle(z, lam + 0.1, c_in)  # noqa: E731
    assert float(losses.eps_loss(wrong, x, c, s, noise, null_class=3)) > 1e-6


def test_condition_dropout_frequency_and_null_token():
    g = torch.Generator().manual_seed(7)
    n, p = 100_000, 0.2
    noise = losses.draw_noise(n, (1,), p_uncond=p, generator=g)
    freq = float(noise.drop.double().mean())
    assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n)
    seen = {}

    def spy(z, lam, c):
        seen["c"] = c
        return torch.zeros_like(z)

    c = torch.randint(0, 5, (n,), generator=g)
    losses.eps_loss(spy, torch.zeros(n, 1), c, schedules.make_schedule("cfg"), noise, null_class=5)
    assert torch.equal(seen["c"], torch.where(noise.drop, torch.full_like(c, 5), c))
