"""Sampler correctness against the exact Gaussian-mixture oracle.

- With exact scores, CFG at w = 0 must sample p(x|c) and at w = −1 must sample p(x): a two-sample
  KS test on random projections (Bonferroni) at N = 20000 per class, and the same test must reject
  a deliberately broken sampler.
- Classifier guidance with s = w + 1 on the exact unconditional score equals CFG with w, step by step.
- DDIM is first order: its error against a 2048-step reference halves when the steps double.
"""

from __future__ import annotations

import math

import pytest
import torch

from guidediff import guidance, samplers, schedules
from guidediff.data.toy2d import load_toy
from guidediff.errors import UsageError
from guidediff.toy.distances import projected_ks_test

N = 20000
P_MIN = 1e-3  # family-wise: 8 projections (Bonferroni) × 4 tests per sampler


@pytest.fixture(scope="module")
def gmm3():
    return load_toy("gmm3")


def _run(denoiser, m, c, *, sampler, steps, seed=0, dtype=torch.float32, noise_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(c), m.dim, generator=gen, dtype=dtype) * noise_scale
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), steps, dtype=dtype)
    with torch.no_grad():
        return samplers.sample(denoiser, z, lams, c, sampler=sampler, generator=gen)


def _shift_lam(denoiser, delta: float):
    """A broken sampler: the denoiser is asked at λ + δ instead of λ."""
    return lambda z, lam, c: denoiser(z, lam + delta, c)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_exact_scores_sample_the_conditionals_and_the_marginal(gmm3, sampler):
    m = gmm3
    classes = torch.arange(m.num_classes).repeat_interleave(N)
    c = torch.cat([classes, classes])
    w = torch.cat([torch.zeros(len(classes)), -torch.ones(len(classes))])  # w = 0 rows, then w = −1 rows
    x = _run(guidance.cfg(m, w, m.null_class), m, c, sampler=sampler, steps=200)
    g = torch.Generator().manual_seed(123)
    for k in range(m.num_classes):
        ref, _ = m.sample(N, classes=torch.tensor(k), generator=g)
        assert projected_ks_test(x[(w == 0) & (c == k)], ref) > P_MIN, f"class {k}, w = 0"
    ref, _ = m.sample(len(classes), generator=g)
    assert projected_ks_test(x[w == -1], ref) > P_MIN, "w = -1 (marginal)"

    # the same test rejects a sampler that asks the denoiser at the wrong λ ...
    c0 = torch.zeros(N, dtype=torch.int64)
    ref0, _ = m.sample(N, classes=torch.tensor(0), generator=g)
    broken = _run(_shift_lam(m, 0.5), m, c0, sampler=sampler, steps=200)
    assert projected_ks_test(broken, ref0) < P_MIN
    # ... and DDIM (deterministic, so it keeps the start's scale) started from noise ×1.25
    if sampler == "ddim":
        wide = _run(m, m, c0, sampler=sampler, steps=200, noise_scale=1.25)
        assert projected_ks_test(wide, ref0) < P_MIN


class Recorder:
    """Keeps every (z, output) a denoiser sees, to compare two sampling runs step by step."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, z, lam, c):
        out = self.denoiser(z, lam, c)
        self.seen.append((z.clone(), out.clone()))
        return out


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_classifier_guidance_on_uncond_equals_cfg(gmm3, sampler, per_sample):
    m = gmm3
    c = torch.arange(300) % m.num_classes
    w = torch.linspace(-1.0, 4.0, 300, dtype=torch.float64) if per_sample else 2.5
    s = w + 1.0
    cfg = Recorder(guidance.cfg(m, w, m.null_class))
    cg = Recorder(guidance.classifier_guidance(guidance.unconditional(m, m.null_class), m.grad_log_prob, s))
    x_cfg = _run(cfg, m, c, sampler=sampler, steps=40, dtype=torch.float64, seed=5)
    x_cg = _run(cg, m, c, sampler=sampler, steps=40, dtype=torch.float64, seed=5)
    assert len(cfg.seen) == len(cg.seen) == 40
    for (z1, e1), (z2, e2) in zip(cfg.seen, cg.seen):
        torch.testing.assert_close(z2, z1, rtol=0, atol=1e-6)
        torch.testing.assert_close(e2, e1, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_cg, x_cfg, rtol=0, atol=1e-6)
    # not vacuous: the guided samples differ from unguided ones
    assert float((x_cfg - _run(m, m, c, sampler=sampler, steps=40, dtype=torch.float64, seed=5)).abs().max()) > 0.1


def test_classifier_guidance_on_cond_equals_cfg_with_w_plus_s(gmm3):
    """On the conditional model, scale s tilts p(x|c)·p(c|x)^s: the same as CFG with w = s."""
    m = gmm3
    c = torch.arange(90) % m.num_classes
    cg = guidance.classifier_guidance(m, m.grad_log_prob, 1.5)
    x_cg = _run(cg, m, c, sampler="ddim", steps=20, dtype=torch.float64)
    x_cfg = _run(guidance.cfg(m, 1.5, m.null_class), m, c, sampler="ddim", steps=20, dtype=torch.float64)
    torch.testing.assert_close(x_cg, x_cfg, rtol=0, atol=1e-6)


def test_ddim_is_first_order(gmm3):
    m = gmm3
    c = torch.arange(600) % m.num_classes
    den = guidance.cfg(m, 1.0, m.null_class)
    ref = _run(den, m, c, sampler="ddim", steps=2048, dtype=torch.float64)
    steps = [8, 16, 32, 64, 128]
    errs = [float((_run(den, m, c, sampler="ddim", steps=s, dtype=torch.float64) - ref).norm(dim=1).mean()) for s in steps]
    log_s = torch.tensor(steps, dtype=torch.float64).log()
    log_e = torch.tensor(errs, dtype=torch.float64).log()
    slope = float(((log_s - log_s.mean()) * (log_e - log_e.mean())).sum() / ((log_s - log_s.mean()) ** 2).sum())
    print(f"\nDDIM error vs steps {dict(zip(steps, [round(e, 5) for e in errs]))}; log-log slope {slope:.3f} (order {-slope:.3f})")
    assert 0.8 <= -slope <= 1.3


@pytest.mark.parametrize("v", [0.0, 0.3, 1.0])
def test_ancestral_variance_interpolation_runs(gmm3, v):
    m = gmm3
    c = torch.arange(60) % m.num_classes
    gen = torch.Generator().manual_seed(0)
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), 20)
    x = samplers.sample_ancestral(m, torch.randn(60, 2, generator=gen), lams, c, v=v, generator=gen)
    assert x.shape == (60, 2) and bool(torch.isfinite(x).all())
    assert float(x.abs().max()) < 10


def test_sampler_input_errors(gmm3):
    m = gmm3
    z = torch.randn(4, 2)
    c = torch.zeros(4, dtype=torch.int64)
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), 5)
    for sampler in ("ddim", "ancestral"):
        with pytest.raises(UsageError, match="increase"):
            samplers.sample(m, z, lams.flip(0), c, sampler=sampler)
        with pytest.raises(UsageError, match="steps"):
            samplers.sample(m, z, lams[:1], c, sampler=sampler)
    with pytest.raises(UsageError, match="steps"):
        schedules.lam_grid(schedules.make_schedule("cfg"), 0)
    with pytest.raises(UsageError, match="v"):
        samplers.sample_ancestral(m, z, lams, c, v=1.5)
    with pytest.raises(UsageError, match="unknown sampler"):
        samplers.sample(m, z, lams, c, sampler="euler")
    assert math.isfinite(float(samplers.sample(m, z, lams, c, sampler="ddim", eta=1.0).sum()))
