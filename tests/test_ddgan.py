"""Tests of the denoising diffusion GAN (guidediff.ddgan): schedule, posterior draws, networks,
losses, mode counting, the training loop (2-D run, NaN guard, exact resume) and the CLI. CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from guidediff.data.toy2d import grid25
from guidediff.ddgan import train as ddgan_train
from guidediff.ddgan import update as ddgan_update
from guidediff.ddgan.config import DDGANConfig, load_config, preset
from guidediff.ddgan.discriminator import ImageDiscriminator, MLPDiscriminator
from guidediff.ddgan.generator import ImageGenerator, MLPGenerator
from guidediff.ddgan.losses import d_loss, g_loss, r1_penalty
from guidediff.ddgan.modes import grid_coverage, kl_to_uniform, mode_histogram, modes_covered, stacked_modes
from guidediff.ddgan.sample import generate, load_generator, sample_chain
from guidediff.ddgan.schedule import DiscreteVP, forward_pair, posterior_sample
from guidediff.errors import UsageError
from guidediff.schedules import LinearSchedule

torch.set_num_threads(1)

GRID_STD = 0.05 / 2.828


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise zero-initialised tensors (ADM zero-inits the last conv of every branch)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


# -- schedule and posterior --------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_levels_are_the_vp_schedule_at_i_over_T(T):
    lams = DiscreteVP(T).lams(dtype=torch.float64)
    assert lams.shape == (T + 1,) and math.isinf(lams[0]) and lams[0] > 0
    assert bool((lams[1:] < lams[:-1]).all())
    # LinearSchedule.t_of_lam inverts the same ᾱ(t) by solving a quadratic: an independent route.
    t = LinearSchedule().t_of_lam(lams[1:])
    torch.testing.assert_close(t, torch.arange(1, T + 1, dtype=torch.float64) / T, rtol=0, atol=1e-10)


def _alpha_bar(lam: float) -> float:
    return 1.0 / (1.0 + math.exp(-lam))


def test_posterior_draws_match_the_ddpm_beta_form():
    lams = DiscreteVP(4).lams(dtype=torch.float64)
    n = 400_000
    g = torch.Generator().manual_seed(0)
    for i in (1, 2, 4):
        lam_t, lam_s = float(lams[i]), float(lams[i - 1])
        x0, xt = 0.7, -1.3
        draws = posterior_sample(torch.full((n, 1), xt), torch.full((n, 1), x0), torch.full((n,), lam_t),
                                 torch.full((n,), lam_s), torch.randn(n, 1, generator=g))
        # DDPM (Ho et al. 2020, eq. 7) in float64 from ᾱ: β_t = 1 − ᾱ_t/ᾱ_s.
        ab_t = _alpha_bar(lam_t)
        ab_s = 1.0 if math.isinf(lam_s) else _alpha_bar(lam_s)
        beta = 1 - ab_t / ab_s
        mean = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * xt
        var = (1 - ab_s) / (1 - ab_t) * beta
        emp_mean, emp_var = draws.double().mean().item(), draws.double().var().item()
        assert abs(emp_mean - mean) < 5 * math.sqrt(var / n) + 1e-6, (i, emp_mean, mean)
        if var == 0:
            assert torch.equal(draws, torch.full_like(draws, x0))  # the last step returns x̂_0 itself
        else:
            assert abs(emp_var / var - 1) < 0.01, (i, emp_var, var)


def test_forward_pair_has_the_joint_of_q():
    lams = DiscreteVP(4).lams(dtype=torch.float64)
    n, x0 = 400_000, 0.4
    g = torch.Generator().manual_seed(1)
    lam_s, lam_t = lams[2], lams[3]
    xs, xt = forward_pair(torch.full((n, 1), x0, dtype=torch.float64), lam_s.expand(n), lam_t.expand(n),
                          torch.randn(n, 1, generator=g, dtype=torch.float64),
                          torch.randn(n, 1, generator=g, dtype=torch.float64))
    a_s, a_t = math.sqrt(_alpha_bar(float(lam_s))), math.sqrt(_alpha_bar(float(lam_t)))
    s2_s, s2_t = 1 - a_s**2, 1 - a_t**2
    assert abs(xt.mean().item() - a_t * x0) < 0.01 and abs(xt.var().item() / s2_t - 1) < 0.01
    cov = ((xs - xs.mean()) * (xt - xt.mean())).mean().item()
    assert abs(cov - (a_t / a_s) * s2_s) < 0.01  # Cov(x_s, x_t) = α_{t|s}·σ_s²


def _exact_x0(mix, x_t: torch.Tensor, lam: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A draw from the true p(x_0 | x_t) of an isotropic Gaussian mixture: pick a component by its
    posterior weight, then the Gaussian conditional inside it."""
    alpha2 = torch.sigmoid(lam)[:, None].double()
    sigma2 = torch.sigmoid(-lam)[:, None].double()
    s2 = mix.covs[:, 0, 0][None, :]
    m = mix.means
    var = alpha2 * s2 + sigma2  # [B, K]
    d2 = ((x_t.double()[:, None, :] - alpha2.sqrt()[:, :, None] * m[None]) ** 2).sum(-1)
    logw = mix.weights.log()[None] - d2 / (2 * var) - torch.log(var)
    k = torch.multinomial(torch.softmax(logw, 1), 1, generator=g)[:, 0]
    var_k, s2_k = var.gather(1, k[:, None]), s2[0, k][:, None]
    mean = m[k] + alpha2.sqrt() * s2_k / var_k * (x_t.double() - alpha2.sqrt() * m[k])
    return (mean + (s2_k * sigma2 / var_k).sqrt() * torch.randn(mean.shape, generator=g, dtype=mean.dtype)).float()


@pytest.mark.parametrize("T", [2, 4])
def test_chain_with_the_exact_denoiser_reproduces_the_data(T):
    """With x̂_0 drawn from the true p(x_0 | x_t), x_{t−1} ~ q(x_{t−1} | x_t, x̂_0) is exact, so the
    chain's output is the data: this checks schedule, posterior and sampler without training."""
    mix = grid25()
    g = torch.Generator().manual_seed(T)
    G = lambda x, z, lam, c: _exact_x0(mix, x, lam, g)  # noqa: E731
    x = sample_chain(G, torch.randn(5000, 2, generator=g), DiscreteVP(T).lams(), nz=1, generator=g)
    cov = grid_coverage(x.numpy(), mix.means.numpy(), GRID_STD)
    assert cov["modes"] == 25 and min(cov["counts"]) > 120
    # within 3σ in 2-D: P = 1 − e^{−4.5} = 0.9889
    assert abs(cov["high_quality_share"] - (1 - math.exp(-4.5))) < 0.01


# -- networks ----------------------------------------------------------------------------------

def _image_config(**overrides) -> DDGANConfig:
    items = ["generator.base_channels=16", "generator.channel_mult=[1, 2]", "generator.num_res_blocks=1",
             "generator.attention_resolutions=[14]", "generator.nz=8", "discriminator.base_channels=8",
             "discriminator.channel_mult=[1, 2]"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config("fmnist", None, items)


def test_image_discriminator_sees_pair_and_time():
    torch.manual_seed(0)
    D = ImageDiscriminator(1, 8, (1, 2), num_classes=3).eval()
    x_prev, x_t = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    lam, c = torch.tensor([-2.0, -2.0]), torch.tensor([0, 1])
    out = D(x_prev, x_t, lam, c)
    assert out.shape == (2,)
    assert (D(x_prev, x_t, lam + 3.0, c) - out).abs().min() > 1e-5  # time enters
    assert (D(x_prev, x_t + 0.5, lam, c) - out).abs().min() > 1e-5  # the condition x_t enters
    assert (D(x_prev + 0.5, x_t, lam, c) - out).abs().min() > 1e-5  # the candidate x_{t−1} enters
    assert (D(x_prev, x_t, lam, c.flip(0)) - out).abs().min() > 1e-5  # projection class term
    # per-sample logits: sample 0 does not depend on sample 1's inputs (R1 relies on it)
    x2 = x_prev.clone()
    x2[1] += 1.0
    assert torch.allclose(D(x2, x_t, lam, c)[0], out[0])


def test_mlp_discriminator_sees_pair_and_time():
    torch.manual_seed(0)
    D = MLPDiscriminator(2, 32, 2, fourier=3)
    x_prev, x_t, lam = torch.randn(4, 2), torch.randn(4, 2), torch.full((4,), -1.0)
    out = D(x_prev, x_t, lam)
    assert (D(x_prev, x_t, lam - 4.0) - out).abs().min() > 1e-6
    assert (D(x_prev, x_t + 0.3, lam) - out).abs().min() > 1e-6


def test_generators_use_latent_time_and_input():
    torch.manual_seed(0)
    cfg = _image_config()
    G = perturbed(ImageGenerator(cfg.unet_config(1, 0), nz=8, mapping_layers=2)).eval()
    x_t, z, lam = torch.randn(2, 1, 28, 28), torch.randn(2, 8), torch.tensor([0.5, 0.5])
    out = G(x_t, z, lam)
    assert out.shape == x_t.shape and out.abs().max() < 1
    for changed in (G(x_t, z + 1, lam), G(x_t, z, lam - 3), G(x_t + 0.5, z, lam)):
        assert (changed - out).abs().amax(dim=(1, 2, 3)).min() > 1e-5
    M = MLPGenerator(2, 2, 32, 2, fourier=2)
    x, z2, lam2 = torch.randn(3, 2), torch.randn(3, 2), torch.zeros(3)
    assert (M(x, z2 + 1, lam2) - M(x, z2, lam2)).abs().min() > 1e-6


# -- losses ------------------------------------------------------------------------------------

def test_gan_losses_are_the_non_saturating_logistic_losses():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want_d = -(math.log(sig(2.0)) + math.log(sig(-1.0))) / 2 - (math.log(1 - sig(0.5)) + math.log(1 - sig(-3.0))) / 2
    assert abs(d_loss(real, fake).item() - want_d) < 1e-6
    assert abs(g_loss(fake).item() + (math.log(sig(0.5)) + math.log(sig(-3.0))) / 2) < 1e-6


def test_r1_penalty_matches_hand_gradients():
    w = torch.tensor([3.0, -4.0])  # ‖w‖² = 25
    x = torch.randn(5, 2, requires_grad=True)
    assert abs(r1_penalty(x @ w + 1.0, x, gamma=0.1).item() - 0.05 * 25) < 1e-5
    # D(x) = ½·a·‖x‖² per sample: ∇ = a·x, so R1 = γ/2 · a² · mean‖x‖²
    a, xq = 1.5, torch.randn(7, 3, requires_grad=True)
    want = 0.5 * 0.2 * a**2 * xq.detach().pow(2).sum(1).mean().item()
    assert abs(r1_penalty(0.5 * a * xq.pow(2).sum(1), xq, gamma=0.2).item() - want) < 1e-5
    # it is differentiable (it trains D): d/da of γ/2·a²·E‖x‖² = γ·a·E‖x‖²
    a_t = torch.tensor(a, requires_grad=True)
    r1_penalty(0.5 * a_t * xq.pow(2).sum(1), xq, gamma=0.2).backward()
    assert abs(a_t.grad.item() - 0.2 * a * xq.detach().pow(2).sum(1).mean().item()) < 1e-4


# -- mode counting -----------------------------------------------------------------------------

def test_grid_coverage_counts_by_hand():
    means = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pts = np.array([[0.01, 0.0], [0.0, 0.02], [1.0, 0.05], [0.5, 0.5], [0.0, 1.2], [np.nan, 0.0]])
    cov = grid_coverage(pts, means, std=0.02, n_sigma=3)  # radius 0.06
    assert cov["counts"] == [2, 1, 0] and cov["modes"] == 2 and cov["n"] == 6
    assert abs(cov["high_quality_share"] - 3 / 6) < 1e-12
    assert grid_coverage(pts, means, std=0.02, min_count=2)["modes"] == 1


def test_kl_and_histogram_by_hand():
    assert kl_to_uniform(np.array([5, 5, 5, 5])) == pytest.approx(0.0, abs=1e-12)
    assert kl_to_uniform(np.array([0, 9, 0, 0])) == pytest.approx(math.log(4))
    # p = (1/2, 1/4, 1/4, 0): Σ p log(4p) = ½ log 2 + 2·¼·log 1 = ½ log 2
    assert kl_to_uniform(np.array([2, 1, 1, 0])) == pytest.approx(0.5 * math.log(2))
    counts = mode_histogram(np.array([0, 3, 3, 999]), 1000)
    assert counts.shape == (1000,) and counts[3] == 2 and counts.sum() == 4 and modes_covered(counts) == 3
    with pytest.raises(UsageError):
        mode_histogram(np.array([1000]), 1000)


def test_kl_parts_split_the_stacked_kl_into_channel_marginals_and_total_correlation():
    from scipy.stats import entropy

    from guidediff.data.stacked import stacked_mode
    from guidediff.ddgan.modes import kl_parts

    # the same garment class in all three channels, classes uniform: every marginal is even, the
    # whole KL is the channels' dependence, 2·log 10
    same = mode_histogram(stacked_mode(*[np.arange(10).repeat(7)] * 3), 1000)
    parts = kl_parts(same, (10, 10, 10))
    assert parts["kl_marginals"] == pytest.approx([0.0] * 3, abs=1e-12)
    assert parts["total_correlation"] == pytest.approx(2 * math.log(10)) == kl_to_uniform(same)
    # channels drawn independently from uneven class marginals: no total correlation
    rng = np.random.default_rng(0)
    marginals = [rng.dirichlet(np.ones(10)) for _ in range(3)]
    product = np.einsum("i,j,k->ijk", *marginals).ravel()
    parts = kl_parts(product * 1e6, (10, 10, 10))
    assert parts["total_correlation"] == pytest.approx(0.0, abs=1e-12)
    assert parts["kl_marginals"] == pytest.approx([math.log(10) - entropy(m) for m in marginals])
    # any histogram (zeros included): the parts add up to the KL, each against scipy's entropies
    counts = rng.integers(0, 5, 1000) * (rng.random(1000) < 0.6)
    parts = kl_parts(counts, (10, 10, 10))
    p = counts.reshape(10, 10, 10) / counts.sum()
    h_k = [entropy(p.sum(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    assert parts["kl_marginals"] == pytest.approx([math.log(10) - h for h in h_k])
    assert parts["total_correlation"] == pytest.approx(sum(h_k) - entropy(p.ravel()))
    assert sum(parts["kl_marginals"]) + parts["total_correlation"] == pytest.approx(kl_to_uniform(counts))
    with pytest.raises(UsageError, match="1000 entries"):
        kl_parts(counts[:999], (10, 10, 10))
    with pytest.raises(UsageError, match="non-negative"):
        kl_parts(-counts, (10, 10, 10))


def test_stacked_coverage_reports_the_kl_parts():
    from guidediff.data.fmnist import load_fmnist
    from guidediff.data.stacked import make_stacked_fmnist
    from guidediff.ddgan.modes import stacked_coverage
    from guidediff.nets.fmnist_classifier import load_eval_classifier

    images, labels = load_fmnist("test")
    x, _ = make_stacked_fmnist(images[:300], labels[:300], 200, seed=0)
    cov = stacked_coverage(x, load_eval_classifier(None, "cpu"))
    assert sum(cov["kl_marginals"]) + cov["total_correlation"] == pytest.approx(cov["kl"])
    assert len(cov["kl_marginals"]) == 3 and cov["n"] == 200


class _BrightnessClassifier(torch.nn.Module):
    """Class k for an image of constant value −1 + 0.2·k: features = mean value, logits peak at k."""

    def features(self, x):
        return x.mean(dim=(1, 2, 3))[:, None]

    def head(self, f):
        centres = -1 + 0.2 * torch.arange(10, dtype=f.dtype)
        return -((f - centres[None]) ** 2) * 100

    def forward(self, x):
        return self.head(self.features(x))


def test_stacked_modes_classify_each_channel():
    triples = [(0, 0, 0), (9, 1, 4), (3, 7, 2)]
    imgs = np.zeros((3, 28, 28, 3), np.uint8)
    for n, trip in enumerate(triples):
        for ch, k in enumerate(trip):
            imgs[n, :, :, ch] = round((0.2 * k) * 127.5)  # v/127.5 − 1 = −1 + 0.2k
    modes = stacked_modes(imgs, _BrightnessClassifier())
    assert modes.tolist() == [100 * a + 10 * b + c for a, b, c in triples]


# -- training ----------------------------------------------------------------------------------

def _toy_config(steps: int, **overrides) -> DDGANConfig:
    items = [f"train.steps={steps}", "train.device=\"cpu\""] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config("grid25", None, items)


def test_grid25_run_covers_the_modes(tmp_path):
    """The paper's Figure 6 set-up at toy scale: DDGAN (the grid25 preset, T = 2) on the
    25-Gaussians for 2500 of the preset's 10k steps, CPU, fixed seed. Covered = at least one of 5000
    samples within 3σ of the mode; the high-quality share guards against a blob that spans the grid
    (about 2 %), the mode count against collapse. (At 2500 steps the mass sits on the outer ring and
    a diffuse interior; by 10k steps 24 modes hold >= 10 samples and half the samples are high quality.)"""
    config = _toy_config(2500)
    result = ddgan_train.train(config, tmp_path / "run", progress=False)
    G, saved = load_generator(tmp_path / "run")
    x = generate(G, saved, 5000, seed=0)["x"]
    cov = grid_coverage(x, grid25().means.numpy(), GRID_STD)
    print(f"grid25: {cov['modes']}/25 modes, {cov['high_quality_share']:.1%} high quality, "
          f"{result.step} steps in {result.elapsed_s:.1f} s")
    assert cov["modes"] >= 20
    assert cov["high_quality_share"] > 0.10


def _poison_fourth_d_loss(monkeypatch) -> None:
    """The discriminator loss turns NaN on its 4th call (step 3)."""
    calls = {"n": 0}
    real_d_loss = ddgan_update.d_loss

    def poisoned(d_real, d_fake):
        calls["n"] += 1
        out = real_d_loss(d_real, d_fake)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(ddgan_update, "d_loss", poisoned)


def test_nan_loss_stops_with_a_checkpoint(tmp_path, monkeypatch):
    _poison_fourth_d_loss(monkeypatch)
    with pytest.raises(ddgan_train.TrainingDiverged, match="step 3.*ckpt-0000003.*--resume"):
        ddgan_train.train(_toy_config(10, **{"generator.hidden": 16, "discriminator.hidden": 16}),
                          tmp_path / "run", progress=False)
    _, state, tensors = ddgan_train.read_ddgan_checkpoint(tmp_path / "run")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in tensors["model"].values())


def test_resume_continues_exactly(tmp_path):
    small = {"generator.hidden": 16, "discriminator.hidden": 16, "train.r1_every": 2}
    ddgan_train.train(_toy_config(6, **small), tmp_path / "once", progress=False)
    ddgan_train.train(_toy_config(3, **small), tmp_path / "twice", progress=False)
    ddgan_train.train(_toy_config(6, **small), tmp_path / "twice", resume=True, progress=False)
    _, s1, a = ddgan_train.read_ddgan_checkpoint(tmp_path / "once")
    _, s2, b = ddgan_train.read_ddgan_checkpoint(tmp_path / "twice")
    assert s1["step"] == s2["step"] == 6
    for part in ("model", "ema", "optimizer"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    with pytest.raises(UsageError, match="--resume"):
        ddgan_train.train(_toy_config(6, **small), tmp_path / "once", progress=False)


def test_resume_keeps_the_runs_mixed_precision(tmp_path):
    """A resumed run trains in the precision it was started with, not the resuming command's default."""
    small = {"generator.hidden": 16, "discriminator.hidden": 16}
    ddgan_train.train(_toy_config(2, **small, **{"train.mixed_precision": '"bf16"'}), tmp_path / "run", progress=False)
    resumed = ddgan_train._Run(_toy_config(4, **small), tmp_path / "run", resume=True, command=None, data=None)
    assert resumed.bf16 and resumed.config.train.mixed_precision == "bf16"


def test_image_run_checkpoints_and_samples_uint8(tmp_path):
    config = _image_config(**{"train.steps": 2, "train.batch_size": 4, "train.device": '"cpu"',
                              "data.conditional": "true"})
    g = torch.Generator().manual_seed(0)
    data = ddgan_train.TrainingData(torch.randint(0, 256, (16, 28, 28, 1), generator=g, dtype=torch.uint8),
                                    torch.arange(16) % 10, 10, (1, 28, 28))
    result = ddgan_train.train(config, tmp_path / "img", progress=False, data=data)
    assert result.step == 2 and result.model_file.is_file()
    for source in (tmp_path / "img", result.model_file):
        G, saved = load_generator(source)
        out = generate(G, saved, 2, classes=[3, 7], seed=1)
        assert out["x"].dtype == np.uint8 and out["x"].shape == (4, 28, 28, 1)
        assert out["y"].tolist() == [3, 3, 7, 7] and out["nfe_per_image"] == saved.diffusion.T
    # the generator is written by checkpoint.save_model: float32 EMA weights, bit for bit, and the
    # readable metadata beside it
    from guidediff.checkpoint import read_tensors

    _, _, parts = ddgan_train.read_ddgan_checkpoint(tmp_path / "img", parts=("ema",))
    exported = read_tensors(result.model_file)
    assert exported.keys() == parts["ema"].keys()
    for k, v in parts["ema"].items():
        assert exported[k].dtype == v.dtype and torch.equal(exported[k], v), k
    meta = json.loads(result.model_file.with_suffix(".json").read_text())
    assert meta["format"] == ddgan_train.MODEL_FORMAT and meta["step"] == 2 and meta["commands"] == []
    log = [json.loads(line) for line in (tmp_path / "img" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and math.isfinite(log[-1]["loss_d"])


def test_optimizer_merge_round_trip():
    a, b = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
    oa, ob = torch.optim.Adam(a.parameters(), lr=1e-3), torch.optim.Adam(b.parameters(), lr=2e-3)
    for opt, net in ((oa, a), (ob, b)):
        net(torch.randn(4, net.in_features)).sum().backward()
        opt.step()
    sa, sb = ddgan_train.split_optimizers(ddgan_train.merge_optimizers(oa.state_dict(), ob.state_dict()))
    for got, want in ((sa, oa.state_dict()), (sb, ob.state_dict())):
        assert got["param_groups"] == want["param_groups"]
        for k in want["state"]:
            for name, v in want["state"][k].items():
                torch.testing.assert_close(got["state"][k][name], v)


# -- config and CLI ----------------------------------------------------------------------------

def test_config_errors_name_the_fix():
    with pytest.raises(UsageError, match="did you mean train.lr_d"):
        load_config("fmnist", None, ["train.lr_dd=1e-4"])
    with pytest.raises(UsageError, match="must be an integer"):
        load_config("fmnist", None, ["diffusion.T=2.5"])
    with pytest.raises(UsageError, match="neither one of fmnist, stacked-fmnist, grid25 nor an image folder"):
        load_config("cifar", None, [])
    # the shared checked assignment of guidediff.config: a misspelt section is an error even when
    # its table is empty, and to_dict is plain JSON (lists, not tuples)
    from guidediff.ddgan.config import apply_nested

    with pytest.raises(UsageError, match="unknown config section 'trian'; did you mean train"):
        apply_nested(preset("fmnist"), {"trian": {}})
    d = preset("fmnist").to_dict()
    assert d == json.loads(json.dumps(d)) and DDGANConfig.from_dict(d) == preset("fmnist")


def test_saved_config_without_the_newer_discriminator_options_keeps_its_plain_discriminator():
    # a checkpoint written before minibatch_std / zero_init_residual existed holds a discriminator
    # without them; today's fmnist preset has both on, which must not leak into the old run
    saved = preset("fmnist").to_dict()
    saved["discriminator"] = {"base_channels": 64, "channel_mult": [1, 2, 4], "hidden": 128, "layers": 3, "fourier": 6}
    old = DDGANConfig.from_dict(saved)
    assert (old.discriminator.minibatch_std, old.discriminator.zero_init_residual) == (0, False)
    new = DDGANConfig.from_dict(preset("fmnist").to_dict())
    assert (new.discriminator.minibatch_std, new.discriminator.zero_init_residual) == (4, True)
    assert new.discriminator.channel_mult == [2, 4, 8, 8]


@pytest.mark.parametrize("name,data", [("fmnist", "fmnist"), ("stacked", "stacked-fmnist"), ("grid25", "grid25")])
def test_config_files_equal_the_presets(name, data):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"ddgan_{name}.toml"
    assert load_config(None, path).to_dict() == preset(data).to_dict()


def test_cli_trains_and_resumes_grid25(tmp_path, capsys):
    from guidediff.cli import main

    out = tmp_path / "cli"
    base = ["train-ddgan", "--data", "grid25", "--T", "2", "--out", str(out), "--device", "cpu", "--no-progress",
            "--set", "generator.hidden=16", "--set", "discriminator.hidden=16"]
    assert main(base + ["--steps", "3"]) == 0
    assert "modes" in capsys.readouterr().out and (out / "samples.png").is_file()
    assert main(base + ["--steps", "3"]) == 2  # a second fresh run into the same folder is refused
    assert "--resume" in capsys.readouterr().err
    assert main(["train-ddgan", "--out", str(out), "--steps", "5", "--device", "cpu", "--no-progress", "--resume"]) == 0
    _, state, _ = ddgan_train.read_ddgan_checkpoint(out)
    assert state["step"] == 5 and len(state["commands"]) == 2


# -- training speed options: lazy R1, the sync-free finite check ----------------------------------------

def _one_step(config: DDGANConfig, r1_step: bool) -> dict[str, torch.Tensor]:
    """train_step from a fixed initial state (seeded nets, fresh Adam) on a fixed batch and seed."""
    torch.manual_seed(0)
    G, D = ddgan_train.build_networks(config, (2,), 5)
    t = config.train
    nets = ddgan_update.Nets(G, D, G, D, torch.optim.Adam(G.parameters(), lr=t.lr_g),
                            torch.optim.Adam(D.parameters(), lr=t.lr_d))
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    lams = DiscreteVP(config.diffusion.T, config.diffusion.beta_min, config.diffusion.beta_max).lams()
    return ddgan_update.train_step(nets, x0, None, lams, config, torch.Generator().manual_seed(2),
                                  r1_step=r1_step, bf16=False)


def test_lazy_r1_every_k_steps_weighs_the_penalty_k_times():
    """StyleGAN2's lazy regularisation: on an R1 step the penalty is γ·k·R1; between them none; the
    adversarial loss is the same whatever k (the same draws)."""
    small = {"generator.hidden": 16, "discriminator.hidden": 16}
    every = {k: _one_step(_toy_config(1, **small, **{"train.r1_every": k}), r1_step=True) for k in (1, 4)}
    off = _one_step(_toy_config(1, **small, **{"train.r1_every": 4}), r1_step=False)
    assert float(every[1]["r1"]) > 0 and float(every[1]["r2"]) > 0
    for name in ("r1", "r2"):
        torch.testing.assert_close(every[4][name], 4 * every[1][name], rtol=1e-6, atol=0)
        assert float(off[name]) == 0.0
    for s in (every[4], off):
        torch.testing.assert_close(s["loss_d"], every[1]["loss_d"], rtol=0, atol=0)
    assert bool(every[1]["finite"])


def test_sync_free_finite_check_gives_the_same_run(tmp_path):
    """finite_check "log" (no host sync per step) and "step" (today's per-step check) train the
    same weights and log the same losses."""
    small = {"generator.hidden": 16, "discriminator.hidden": 16, "train.log_every": 2}
    runs = {}
    for mode in ("step", "log"):
        ddgan_train.train(_toy_config(6, **small, **{"train.finite_check": f'"{mode}"'}), tmp_path / mode,
                          progress=False)
        logs = [json.loads(line) for line in (tmp_path / mode / "log.jsonl").read_text().splitlines()]
        runs[mode] = ([{k: d[k] for k in ("loss_d", "loss_g", "r1", "r2")} for d in logs],
                      ddgan_train.read_ddgan_checkpoint(tmp_path / mode)[2]["model"])
    assert runs["step"][0] == runs["log"][0] and len(runs["step"][0]) == 3
    for k, v in runs["step"][1].items():
        torch.testing.assert_close(runs["log"][1][k], v, rtol=0, atol=0)


def test_resumed_log_counts_the_earlier_training_time(tmp_path):
    small = {"generator.hidden": 16, "discriminator.hidden": 16, "train.log_every": 1}
    ddgan_train.train(_toy_config(3, **small), tmp_path / "run", progress=False)
    _, state, _ = ddgan_train.read_ddgan_checkpoint(tmp_path / "run")
    ddgan_train.train(_toy_config(6, **small), tmp_path / "run", resume=True, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / ddgan_train.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[3]["elapsed_s"] >= state["training_time_s"]


@pytest.mark.parametrize("log_every, checkpoint_every", [(5, 2), (2, 100)], ids=["at-a-checkpoint", "at-a-log-step"])
def test_sync_free_finite_check_stops_at_the_next_log_step(tmp_path, monkeypatch, log_every, checkpoint_every):
    """The device flag is read at the next checkpoint or log step, whichever comes first."""
    _poison_fourth_d_loss(monkeypatch)
    config = _toy_config(20, **{"generator.hidden": 16, "discriminator.hidden": 16, "train.log_every": log_every,
                                "train.checkpoint_every": checkpoint_every, "train.finite_check": '"log"'})
    names = ".*ckpt-0000002" if checkpoint_every == 2 else ".*no checkpoint was written yet"
    with pytest.raises(ddgan_train.TrainingDiverged, match=r"non-finite at step 3 \(found at step 4\)" + names):
        ddgan_train.train(config, tmp_path / "run", progress=False)
    if checkpoint_every == 2:
        _, state, tensors = ddgan_train.read_ddgan_checkpoint(tmp_path / "run")
        assert state["step"] == 2  # no checkpoint of the poisoned weights
        assert all(torch.isfinite(v).all() for v in tensors["model"].values())


def test_minibatch_std_appends_each_groups_spread():
    from guidediff.ddgan.discriminator import minibatch_std

    torch.manual_seed(0)
    h = torch.randn(6, 3, 2, 2)
    out = minibatch_std(h, 4)  # 6 samples: groups of 3 (the largest divisor of 6 up to 4)
    assert out.shape == (6, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], h)
    hd = h.double()
    for i in range(6):
        members = [j for j in range(6) if j % 2 == i % 2]  # sample i joins group i mod B/g
        spread = (hd[members].var(0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(out[i, 3], torch.full((2, 2), float(spread), dtype=torch.float32))
    assert minibatch_std(h[:5], 4).shape == (5, 4, 2, 2)  # a prime batch: groups of one


def test_discriminator_options_minibatch_std_and_zero_init():
    torch.manual_seed(0)
    D = ImageDiscriminator(1, 8, (1, 2), minibatch_std=2, zero_init_residual=True).eval()
    assert all(not b.conv2.weight.detach().any() for b in D.blocks)
    # each block starts as its skip path alone: avg_pool(skip(x)) / √2, bias included
    from torch.nn.functional import avg_pool2d

    block, h, emb = D.blocks[0], torch.randn(2, 8, 28, 28), torch.randn(2, 32)
    torch.testing.assert_close(block(h, emb), avg_pool2d(block.skip(h), 2) / math.sqrt(2.0))
    x_prev, x_t, lam = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.full((4,), -2.0)
    out = D(x_prev, x_t, lam)
    x2 = x_prev.clone()
    x2[2] += 1.0  # sample 2 shares a group with sample 0 (4 samples, groups of 2: {0, 2}, {1, 3})
    moved = D(x2, x_t, lam)
    assert (moved[0] - out[0]).abs() > 1e-6 and torch.allclose(moved[1], out[1]) and torch.allclose(moved[3], out[3])


def test_discriminator_options_are_checked_in_one_line():
    with pytest.raises(UsageError, match="at most 4 fit"):
        _image_config(**{"discriminator.channel_mult": "[1, 1, 1, 1, 1]"})
    with pytest.raises(UsageError, match="discriminator.minibatch_std must be 0"):
        _image_config(**{"discriminator.minibatch_std": -1})
    with pytest.raises(UsageError, match="discriminator.zero_init_residual.*must be true or false"):
        _image_config(**{"discriminator.zero_init_residual": 1})
    with pytest.raises(UsageError, match="0 \\(off\\) or a group size >= 2"):
        _image_config(**{"discriminator.minibatch_std": 1})
    with pytest.raises(UsageError, match="must divide train.batch_size"):
        _image_config(**{"discriminator.minibatch_std": 4, "train.batch_size": 6})
    with pytest.raises(UsageError, match="options of the image discriminator"):
        load_config("grid25", None, ["discriminator.minibatch_std=4"])
    config = _image_config(**{"discriminator.minibatch_std": 4, "discriminator.zero_init_residual": "true"})
    assert (config.discriminator.minibatch_std, config.discriminator.zero_init_residual) == (4, True)


def test_discriminator_by_level_scores_each_level():
    from guidediff.ddgan.diagnostics import discriminator_by_level
    from guidediff.ddgan.schedule import DiscreteVP

    lams = DiscreteVP(4).lams()
    x0 = torch.rand(64, 1, 8, 8) * 1.6 - 0.8  # real images never reach the generator's +1

    def white(x_t, z, lam, c):  # a generator that always draws the all-white image
        return torch.ones_like(x_t)

    def sees_white(x_prev, x_t, lam, c):  # +1 unless the candidate is the white image
        return torch.where((x_prev - 1).abs().flatten(1).max(1).values < 1e-6, -1.0, 1.0)

    rows = discriminator_by_level(white, sees_white, x0, None, lams, 2, torch.Generator().manual_seed(0))
    assert [r["t"] for r in rows] == [1, 2, 3, 4] and [r["lam"] for r in rows] == lams[1:].tolist()
    # at t = 1 the generated x_0 is G's output exactly (zero posterior variance): told apart every time
    assert rows[0]["accuracy"] == 1.0 and rows[0]["d_real"] == 1.0 and rows[0]["d_fake"] == -1.0
    # above it the posterior adds noise, this D calls everything real: accuracy one half
    assert all(r["accuracy"] == 0.5 for r in rows[1:])
    constant = discriminator_by_level(white, lambda *a: torch.full((64,), 5.0), x0, None, lams, 2,
                                      torch.Generator().manual_seed(0))
    assert all(r["accuracy"] == 0.5 and r["d_real"] == r["d_fake"] == 5.0 for r in constant)
    assert rows[0]["auc"] == 1.0 and all(r["auc"] == 0.5 for r in rows[1:] + constant)  # ties count one half


def test_discriminator_by_level_builds_the_pairs_of_training():
    """What D and G are shown at level t: G gets x_t ~ q(x_t | x_0) and λ_t; D gets λ_t and, as the real
    candidate, x_{t−1} ~ q(x_{t−1} | x_0) (variance α²_{t−1}·Var x_0 + σ²_{t−1} with α² = sigmoid(λ)), and x_t
    as the condition; the fake candidate is the posterior draw from G's x̂_0."""
    from guidediff.ddgan.diagnostics import discriminator_by_level
    from guidediff.ddgan.schedule import DiscreteVP

    lams = DiscreteVP(4).lams()
    x0 = torch.rand(2048, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    var_x0 = float(x0.double().var())
    seen = {"G": [], "D": []}

    def G(x_t, z, lam, c):
        seen["G"].append((x_t.clone(), lam.clone()))
        return torch.zeros_like(x_t)

    def D(x_prev, x_t, lam, c):
        seen["D"].append((x_prev.clone(), x_t.clone(), lam.clone()))
        return torch.zeros(len(x_prev))

    discriminator_by_level(G, D, x0, None, lams, 2, torch.Generator().manual_seed(0))
    for t in range(1, 5):
        (g_xt, g_lam), real, fake = seen["G"][t - 1], seen["D"][2 * t - 2], seen["D"][2 * t - 1]
        lam_t, lam_s = float(lams[t]), float(lams[t - 1])
        assert torch.all(g_lam == lams[t]) and torch.all(real[2] == lams[t]) and torch.all(fake[2] == lams[t])
        assert torch.equal(real[1], g_xt) and torch.equal(fake[1], g_xt)  # the same x_t conditions all three
        sig = torch.sigmoid(torch.tensor([lam_s, lam_t], dtype=torch.float64))
        for x, a2 in ((real[0], sig[0]), (g_xt, sig[1])):
            expected = float(a2 * var_x0 + (1 - a2))
            assert float(x.double().var()) == pytest.approx(expected, rel=0.03)
        # G says x̂_0 = 0: the fake is pure posterior noise around a scaled x_t, not the real x_{t−1}
        assert not torch.allclose(fake[0], real[0])


def test_pairwise_auc_is_the_mann_whitney_statistic():
    from scipy.stats import mannwhitneyu

    from guidediff.ddgan.diagnostics import pairwise_auc

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randint(0, 6, (300,), generator=g).float(), torch.randint(0, 5, (200,), generator=g).float()
    u = mannwhitneyu(real.numpy(), fake.numpy()).statistic
    assert pairwise_auc(real, fake) == pytest.approx(u / (300 * 200), abs=1e-12)
    # all logits positive, every real pair ranked above every fake one: accuracy at 0 is one half, AUC 1
    assert pairwise_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0


@pytest.mark.parametrize("cuda_graph", ["false", '"eager"'])
def test_logged_window_is_the_mean_of_its_steps(tmp_path, cuda_graph):
    """A record of log_every = 3 holds the mean of the three per-step records (the same draws), in the
    classic step and in the graph-ready one, which add up their statistics the same way."""
    small = {"generator.hidden": 16, "discriminator.hidden": 16, "train.cuda_graph": cuda_graph}
    logs = {}
    for every in (1, 3):
        ddgan_train.train(_toy_config(3, **small, **{"train.log_every": every}), tmp_path / str(every), progress=False)
        logs[every] = [json.loads(line) for line in (tmp_path / str(every) / ddgan_train.LOG_FILE).read_text().splitlines()]
    assert len(logs[1]) == 3 and len(logs[3]) == 1
    for key in ("loss_d", "loss_g", "r1", "r2", "d_real", "d_fake"):
        assert logs[3][0][key] == pytest.approx(sum(r[key] for r in logs[1]) / 3, rel=1e-6, abs=1e-9)


def test_resume_keeps_the_runs_step_mode_unless_the_command_names_another(tmp_path):
    from guidediff.cli import main

    run = tmp_path / "run"
    small = ["--no-progress", "--samples", "8", "--device", "cpu"]
    assert main(["train-ddgan", "--data", "grid25", "--out", str(run), "--steps", "2", "--set", "generator.hidden=16",
                 "--set", "discriminator.hidden=16", "--set", "train.cuda_graph=false", *small]) == 0

    def saved_mode() -> object:
        return ddgan_train.read_ddgan_checkpoint(run, parts=())[1]["config"]["train"]["cuda_graph"]

    assert main(["train-ddgan", "--out", str(run), "--steps", "4", "--resume", *small]) == 0
    assert saved_mode() is False  # not today's default ("auto")
    assert main(["train-ddgan", "--out", str(run), "--steps", "6", "--resume", "--set", 'train.cuda_graph="eager"',
                 *small]) == 0
    assert saved_mode() == "eager"
