"""The exact Gaussian-mixture oracle: closed forms against autograd, scipy and numerical integration."""

from __future__ import annotations

import math

import pytest
import torch

from guidediff.data.toy2d import DATASETS, load_toy
from guidediff.errors import UsageError
from guidediff.toy.distances import projected_ks_test, sliced_wasserstein
from guidediff.toy.gmm import GaussianMixture
from guidediff.toy.tilted import make_grid, sample_tilted, sample_tilted_grid, tilted_density, tilted_log_density


def random_mixture(dim: int = 2, seed: int = 0) -> GaussianMixture:
    """Full covariances, unequal weights, several components per class: nothing axis-aligned."""
    g = torch.Generator().manual_seed(seed)
    k = 5
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) * 0.3 + 0.05 * torch.eye(dim, dtype=torch.float64)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(means, covs, weights, torch.tensor([0, 1, 0, 2, 1]), name="random")


MIXTURES = [load_toy(name) for name in DATASETS] + [random_mixture(2), random_mixture(3, seed=1)]
IDS = list(DATASETS) + ["random2d", "random3d"]


def _inputs(m: GaussianMixture, n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, _ = m.sample(n, generator=g)
    lam = torch.linspace(-6, 9, n, dtype=torch.float64)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    z = alpha[:, None] * x + sigma[:, None] * torch.randn(n, m.dim, generator=g, dtype=torch.float64)
    return z, lam


def _reference_log_prob(m: GaussianMixture, z, lam, c: int) -> torch.Tensor:
    """log p(z_λ | c) from scipy's multivariate normal on the noised components (independent code)."""
    import numpy as np
    from scipy.stats import multivariate_normal

    out = []
    for zi, li in zip(z.numpy(), lam.tolist()):
        a2, s2 = 1 / (1 + math.exp(-li)), 1 / (1 + math.exp(li))
        terms = [
            math.log(float(p)) + multivariate_normal(math.sqrt(a2) * mu.numpy(), a2 * cov.numpy() + s2 * np.eye(m.dim)).logpdf(zi)
            for mu, cov, p, lab in zip(m.means, m.covs, m.weights, m.labels)
            if c == m.null_class or int(lab) == c
        ]
        prior = 1.0 if c == m.null_class else float(m.weights[m.labels == c].sum())
        out.append(float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0)) - math.log(prior))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("m", MIXTURES, ids=IDS)
def test_log_prob_matches_scipy(m):
    z, lam = _inputs(m, n=12)
    for c in (0, m.null_class):
        got = m.log_prob(z, lam, torch.full((len(z),), c))
        torch.testing.assert_close(got, _reference_log_prob(m, z, lam, c), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m", MIXTURES, ids=IDS)
def test_score_is_autograd_of_log_prob(m):
    z, lam = _inputs(m)
    for c in [0, m.num_classes - 1, m.null_class]:
        cls = torch.full((len(z),), c)
        zg = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(m.log_prob(zg, lam, cls).sum(), zg)
        torch.testing.assert_close(m.score(z, lam, cls), grad, rtol=1e-8, atol=1e-8)
        # the denoiser contract: ε = −σ·score
        sigma = torch.sigmoid(-lam).sqrt()[:, None]
        torch.testing.assert_close(m(z, lam, cls), -sigma * grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("m", MIXTURES, ids=IDS)
def test_bayes_classifier_and_its_gradient(m):
    z, lam = _inputs(m, seed=1)
    logs = torch.stack([m.log_class_prob(z, lam, torch.full((len(z),), c)) for c in range(m.num_classes)], 1)
    torch.testing.assert_close(torch.logsumexp(logs, 1), torch.zeros(len(z), dtype=torch.float64), atol=1e-10, rtol=0)
    c = torch.arange(len(z)) % m.num_classes
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_class_prob(zg, lam, c).sum(), zg)
    torch.testing.assert_close(m.grad_log_prob(z, lam, c), grad, rtol=1e-8, atol=1e-8)


def test_noised_density_integrates_to_one():
    m = random_mixture(2)
    xs = torch.linspace(-9, 9, 601, dtype=torch.float64)
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    cell = float(xs[1] - xs[0]) ** 2
    for lam in (-3.0, 0.0, 4.0):
        for c in (0, 2, m.null_class):
            lp = m.log_prob(pts, torch.tensor(lam, dtype=torch.float64), torch.full((len(pts),), c))
            assert float(lp.exp().sum()) * cell == pytest.approx(1.0, abs=1e-4)


def test_cfg_batch_shortcut_and_per_row_lambda_agree_with_plain_calls():
    """The oracle computes [z; z] batches (what guidance.cfg builds) once; results must not change."""
    m = random_mixture(2)
    z, lam = _inputs(m, n=30)
    c = torch.arange(30) % m.num_classes
    null = torch.full_like(c, m.null_class)
    together = m(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, null]))
    apart = torch.cat([m(z, lam, c), m(z, lam, null)])
    torch.testing.assert_close(together, apart, rtol=1e-12, atol=1e-12)
    one = torch.tensor(1.5, dtype=torch.float64)
    torch.testing.assert_close(m(z, one.expand(30), c), m(z, torch.full((30,), 1.5, dtype=torch.float64) + 0 * lam, c))
    per_row = torch.stack([m(z[i : i + 1], lam[i : i + 1], c[i : i + 1])[0] for i in range(30)])
    torch.testing.assert_close(m(z, lam, c), per_row, rtol=1e-12, atol=1e-12)


def test_float32_matches_float64():
    m = load_toy("gmm3")
    z, lam = _inputs(m, n=50)
    c = torch.arange(50) % 4
    torch.testing.assert_close(m(z.float(), lam.float(), c).double(), m(z, lam, c), rtol=1e-4, atol=1e-4)


def test_class_conditional_sampling():
    m = random_mixture(2)
    g = torch.Generator().manual_seed(3)
    for c in range(m.num_classes):
        x, y = m.sample(20000, classes=torch.tensor(c), generator=g)
        assert bool((y == c).all())
        k = m.labels == c
        mean = (m.weights[k, None] * m.means[k]).sum(0) / m.weights[k].sum()
        torch.testing.assert_close(x.mean(0), mean, atol=0.05, rtol=0)


def test_bad_classes_and_json_round_trip():
    m = load_toy("gmm3")
    z = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(UsageError, match="class"):
        m(z, torch.zeros(2, dtype=torch.float64), torch.tensor([0, 7]))
    with pytest.raises(UsageError, match="labels"):
        GaussianMixture(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2), torch.ones(2), torch.tensor([0, 2]))
    back = GaussianMixture.from_json(m.to_json())
    for a, b in ((back.means, m.means), (back.covs, m.covs), (back.weights, m.weights)):
        torch.testing.assert_close(a, b)
    assert torch.equal(back.labels, m.labels)
    with pytest.raises(UsageError, match="unknown 2-D dataset"):
        load_toy("moons")


# ----------------------------------------------------------------------------- the tilted density
@pytest.mark.parametrize("name", ["gmm3", "ring8"])
def test_tilted_density_normalised_and_w0_is_the_conditional(name):
    m = load_toy(name)
    grid = make_grid(m)
    pts = grid.points
    for c in (0, 1):
        for w in (-1.0, 0.0, 1.0, 3.0):
            d = tilted_density(m, grid, c, w)
            assert float(d.sum()) * grid.cell_area == pytest.approx(1.0, abs=1e-9)
        # w = 0: p(x|c) itself (its closed form, not renormalised); w = −1: p(x)
        cond = m.log_prob_data(pts, torch.full((len(pts),), c)).exp().reshape(d.shape)
        torch.testing.assert_close(tilted_density(m, grid, c, 0.0), cond, rtol=1e-3, atol=1e-6)
        marg = m.log_prob_data(pts, torch.full((len(pts),), m.null_class)).exp().reshape(d.shape)
        torch.testing.assert_close(tilted_density(m, grid, c, -1.0), marg, rtol=1e-3, atol=1e-6)


def test_tilted_log_density_is_the_product():
    m = load_toy("gmm3")
    x, _ = m.sample(50, generator=torch.Generator().manual_seed(0))
    w = 2.5
    log_cond = m.log_prob_data(x, torch.zeros(50, dtype=torch.int64))
    zero = torch.zeros(50, dtype=torch.float64)
    # clean data as the λ → ∞ limit of the noised classifier
    log_post = m.log_class_prob(x, torch.full((50,), 60.0, dtype=torch.float64), torch.zeros(50, dtype=torch.int64))
    torch.testing.assert_close(tilted_log_density(m, x, 0, w), log_cond + w * log_post + zero, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("w", [-0.5, 0.0, 3.0])
def test_rejection_sampler_matches_grid_sampler(w):
    m = load_toy("gmm3")
    g = torch.Generator().manual_seed(4)
    exact = sample_tilted(m, 1, w, 20000, generator=g)
    grid = make_grid(m, max_cells=400)
    gridded = sample_tilted_grid(grid, tilted_density(m, grid, 1, w), 20000, generator=g)
    assert projected_ks_test(exact, gridded) > 0.01
    # and the test has power: the w = 3 tilt is far from the w = 0 one
    if w == 3.0:
        assert projected_ks_test(exact, sample_tilted(m, 1, 0.0, 20000, generator=g)) < 1e-6


def test_sliced_wasserstein_of_a_shift():
    """SW₂ of a translation by t is |t|·sqrt(E_θ cos²) = |t|/√2 in 2-D (quantiles shift by θ·t)."""
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert sliced_wasserstein(x, x + t, projections=2000) == pytest.approx(0.5 / math.sqrt(2), rel=0.03)
    assert sliced_wasserstein(x, x.clone()) < 1e-6
    assert sliced_wasserstein(x, x[:3000] + t, projections=2000) == pytest.approx(0.5 / math.sqrt(2), rel=0.1)
