"""VDM: learned schedule, Fourier features, the bound's terms against closed forms, bits/dim CLI."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from guidediff.nets.unet import UNetConfig
from guidediff.schedules import CFGSchedule, lam_grid
from guidediff.vdm import (
    LearnedSchedule,
    VDMConfig,
    VDMModel,
    diffusion_loss_continuous,
    diffusion_loss_discrete,
    fourier_features,
    prior_loss,
    reconstruction_loss,
    snr_ratio_minus_one,
    vdm_unet_config,
    vlb_terms,
)
from guidediff.vdm.bound import LN2, grid_values

torch.set_default_dtype(torch.float32)


class TinyDenoiser(nn.Module):
    """A fixed random conv net ε̂(z, λ): smooth in z and λ, no training."""

    def __init__(self, channels: int = 1, hidden: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)
        self.freq = nn.Parameter(torch.randn(hidden) * 0.3)

    def forward(self, z, lam, c):
        h = self.inp(z) + torch.sin(lam[:, None] * self.freq)[:, :, None, None]
        return self.out(torch.tanh(h))


def random_learned(lam_min: float, lam_max: float, hidden: int = 32, seed: int = 1, scale: float = 2.0):
    """A LearnedSchedule with random (far from initial) shape parameters and the given endpoints."""
    torch.manual_seed(seed)
    s = LearnedSchedule(hidden, gamma_0=-lam_max, gamma_1=-lam_min)
    with torch.no_grad():
        for p in (s.w1, s.b1, s.w2, s.b2, s.w3):
            p.copy_(torch.randn_like(p) * scale)
    return s


def grid_images(n: int, shape=(1, 6, 6), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, (n, *shape), generator=g)
    return k.float() / 127.5 - 1.0


def quadrature_loss(net, x, eps, schedule, n_u: int) -> float:
    """½∫₀¹ −λ'(u)·‖ε − ε̂‖² du by the midpoint rule, the same ε at every u (common noise)."""
    u = (torch.arange(n_u, dtype=torch.float64) + 0.5) / n_u
    b = x.shape[0]
    xs, es = x.repeat(n_u, 1, 1, 1), eps.repeat(n_u, 1, 1, 1)
    us = u.repeat_interleave(b)
    c = torch.zeros(b * n_u, dtype=torch.long)
    with torch.no_grad():
        return float(diffusion_loss_continuous(net, xs, c, schedule, us, es).double().mean())


# -- schedule --------------------------------------------------------------------------------------

def test_learned_schedule_monotone_endpoints_derivative_inverse():
    for seed in range(3):
        s = random_learned(-6.0, 11.0, hidden=64, seed=seed, scale=3.0)
        u = torch.linspace(0, 1, 10001, dtype=torch.float64)
        with torch.no_grad():
            lam, dlam = s.lam(u), s.dlam_du(u)
            assert (lam[1:] < lam[:-1]).all(), "λ(u) must decrease for any parameters"
            assert (dlam < 0).all()
            assert abs(float(lam[0]) - 11.0) < 1e-9 and abs(float(lam[-1]) + 6.0) < 1e-9
            h = 1e-6
            uu = u[1:-1:50]
            fd = (s.lam(uu + h) - s.lam(uu - h)) / (2 * h)
            torch.testing.assert_close(s.dlam_du(uu), fd, rtol=1e-5, atol=1e-6)
            lam_q = torch.linspace(-6.0, 11.0, 101, dtype=torch.float64)
            torch.testing.assert_close(s.lam(s.u_of_lam(lam_q)), lam_q, rtol=0, atol=1e-9)
    grid = lam_grid(s, 10)
    assert grid.shape == (11,) and bool((grid[1:] > grid[:-1]).all())


# -- diffusion loss ----------------------------------------------------------------------------------

def test_continuous_diffusion_loss_depends_only_on_the_endpoints():
    """VDM §5: L_∞ = ½∫_{λ_min}^{λ_max} ‖ε − ε̂(z_λ, λ)‖² dλ whatever the path between the ends.
    Pairing: both schedules see the same x and ε; the time integral is done by quadrature, so the
    only difference left is the quadrature error, not Monte-Carlo noise."""
    net = TinyDenoiser()
    x = grid_images(3)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    fixed = CFGSchedule(lam_min=-5.0, lam_max=8.0)
    learned = random_learned(-5.0, 8.0)
    l_fixed = quadrature_loss(net, x, eps, fixed, 3000)
    l_learned = quadrature_loss(net, x, eps, learned, 3000)
    assert abs(l_fixed - l_learned) < 2e-3 * abs(l_fixed)
    # the endpoints do matter: moving λ_min changes the loss by far more than the tolerance
    l_other = quadrature_loss(net, x, eps, random_learned(-6.0, 8.0), 3000)
    assert abs(l_other - l_fixed) > 2e-2 * abs(l_fixed)


def test_discrete_time_loss_converges_to_continuous():
    net = TinyDenoiser(seed=3)
    x = grid_images(2, seed=1)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    schedule = random_learned(-5.0, 9.0, seed=4)
    l_inf = quadrature_loss(net, x, eps, schedule, 4000)
    errors = []
    for T in (10, 100, 1000):
        # every step once, each with the same ε: L_T exactly, without sampling the step
        u = (torch.arange(T, dtype=torch.float64) + 0.5) / T
        b = x.shape[0]
        with torch.no_grad():
            l_T = diffusion_loss_discrete(net, x.repeat(T, 1, 1, 1), torch.zeros(b * T, dtype=torch.long), schedule,
                                          u.repeat_interleave(b), eps.repeat(T, 1, 1, 1), T)
        errors.append(abs(float(l_T.double().mean()) - l_inf) / abs(l_inf))
    # first order in 1/T (a Riemann sum of SNR differences): each tenfold T cuts the gap ≥ 5×
    assert errors[0] > 5 * errors[1] and errors[1] > 5 * errors[2]
    assert errors[2] < 1e-2


def test_expm1_weight_matches_naive_in_float64_and_beats_it_in_float32():
    d = torch.logspace(-6, 0, 25, dtype=torch.float64)
    lam_t = torch.full_like(d, 2.0)
    lam_s = lam_t + d
    naive = torch.exp(lam_s - lam_t) - 1
    torch.testing.assert_close(snr_ratio_minus_one(lam_s, lam_t), naive, rtol=1e-9, atol=0)

    tiny = torch.tensor([1e-7, 3e-7, 1e-6, 3e-6], dtype=torch.float64)
    ref = torch.expm1(tiny)
    lam_t32 = torch.zeros(4, dtype=torch.float32)
    lam_s32 = tiny.float()
    good = snr_ratio_minus_one(lam_s32, lam_t32).double()
    bad = (torch.exp(lam_s32 - lam_t32) - 1).double()
    err_good = ((good - ref) / ref).abs().max()
    err_bad = ((bad - ref) / ref).abs().max()
    assert err_good < 1e-6
    assert err_bad > 1e-2 and err_bad > 1000 * err_good


def test_variance_gradient_routing():
    """Shape parameters get ∇ of Σ 2(L_i − L̄)/L̄ · L_i / B; endpoints and the net get ∇ of the mean loss."""
    torch.manual_seed(0)
    net = TinyDenoiser(seed=2)
    schedule = random_learned(-5.0, 9.0, hidden=16, seed=6, scale=1.0)
    x = grid_images(8, seed=2)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    u = torch.rand(8, generator=torch.Generator().manual_seed(2))
    c = torch.zeros(8, dtype=torch.long)
    shape_params = [schedule.w1, schedule.b1, schedule.w2, schedule.b2, schedule.w3]
    end_params = [schedule.gamma_0, schedule.gap]
    params = shape_params + end_params + list(net.parameters())

    loss = diffusion_loss_continuous(net, x, c, schedule, u, eps, variance_grad=True)
    got = torch.autograd.grad(loss.mean(), params, allow_unused=True)

    plain = diffusion_loss_continuous(net, x, c, schedule, u, eps, variance_grad=False)
    torch.testing.assert_close(plain, loss)
    scale = (2 * (plain - plain.mean()) / plain.mean()).detach()
    want_shape = torch.autograd.grad((scale * plain).mean(), shape_params, retain_graph=True)
    want_rest = torch.autograd.grad(plain.mean(), end_params + list(net.parameters()))
    for g, w in zip(got, list(want_shape) + list(want_rest)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    # and it is a different gradient from the plain one for the shape
    plain_shape = torch.autograd.grad(
        diffusion_loss_continuous(net, x, c, schedule, u, eps).mean(), shape_params[2:3])[0]
    assert not torch.allclose(plain_shape, got[2], rtol=1e-2)


# -- the whole bound against closed forms ---------------------------------------------------------------

def test_gaussian_data_bound_matches_closed_form():
    """x ~ N(μ, s²) per dimension, the exact (linear) denoiser E[ε|z], a Gaussian decoder.

    E_x[−VLB] = H(x) + KL(q(z_1) ‖ N(0, I)) + E_z0 KL(q(x|z_0) ‖ p(x|z_0)) in continuous time (the
    reverse conditionals are exact), all closed-form; the diffusion term alone equals
    ½·log((1 + SNR_max s²)/(1 + SNR_min s²)) per dimension (I-MMSE). With λ ∈ [−12, 12] the two gaps
    are ~1e-4, so the bound is the true negative log-likelihood up to them."""
    mu = torch.tensor([0.5, -0.3, 0.0, 1.2], dtype=torch.float64).view(1, 1, 2, 2)
    s = torch.tensor([0.7, 0.2, 1.0, 0.4], dtype=torch.float64).view(1, 1, 2, 2)
    lam_min, lam_max = -12.0, 12.0
    schedule = random_learned(lam_min, lam_max, hidden=16, seed=3, scale=0.5)

    def exact(z, lam, c):
        lam = lam.double().view(-1, 1, 1, 1)
        a2, sig2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        return (sig2.sqrt() * (z.double() - a2.sqrt() * mu) / (a2 * s**2 + sig2)).to(z.dtype)

    n = 200_000
    g = torch.Generator().manual_seed(0)
    x = (mu + s * torch.randn((n, 1, 2, 2), generator=g, dtype=torch.float64)).float()
    u = torch.remainder(torch.rand((), generator=g) + torch.arange(n) / n, 1.0)
    eps, eps_0 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    with torch.no_grad():
        terms = vlb_terms(exact, x, torch.zeros(n, dtype=torch.long), schedule, u, eps, eps_0, discretised=False)

    snr_max, snr_min = math.exp(lam_max), math.exp(lam_min)
    a2_1, s2_1 = 1 / (1 + math.exp(-lam_min)), 1 / (1 + math.exp(lam_min))
    a2_0, s2_0 = 1 / (1 + math.exp(-lam_max)), 1 / (1 + math.exp(lam_max))
    diffusion = (0.5 * torch.log((1 + snr_max * s**2) / (1 + snr_min * s**2))).sum()
    entropy = (0.5 * torch.log(2 * math.pi * math.e * s**2)).sum()
    v1, m1 = a2_1 * s**2 + s2_1, a2_1**0.5 * mu
    kl_prior = (0.5 * (v1 + m1**2 - 1 - torch.log(v1))).sum()
    # q(x|z_0) = N(m, τ²), p(x|z_0) = N(z_0/α_0, r²); m − z_0/α_0 = a·z_0 + b is linear in z_0
    tau2 = 1 / (1 / s**2 + snr_max)
    r2 = 1 / snr_max
    a = tau2 * a2_0**0.5 / s2_0 - 1 / a2_0**0.5
    b = tau2 * mu / s**2
    ez, vz = a2_0**0.5 * mu, a2_0 * s**2 + s2_0
    kl_dec = (0.5 * (tau2 / r2 + ((a * ez + b) ** 2 + a**2 * vz) / r2 - 1 - torch.log(tau2 / r2))).sum()
    bound = entropy + kl_prior + kl_dec

    def check(values, expected):
        values = values.double()
        se = float(values.std() / math.sqrt(values.numel()))
        assert abs(float(values.mean()) - float(expected)) < 4 * se + 1e-4, (float(values.mean()), float(expected), se)
        return se

    se = check(terms.diffusion, diffusion)
    assert se < 5e-3 * float(diffusion)  # the check above has teeth
    check(terms.total, bound)
    assert abs(float(bound - entropy)) < 1e-3  # so the bound is the Gaussian's NLL, E[−log q(x)]


def test_uniform_data_costs_eight_bits_per_dim():
    x = grid_images(64, shape=(1, 4, 4), seed=9)
    dims = 16
    lam_0 = torch.tensor(-30.0)
    z_0 = torch.sigmoid(lam_0).sqrt() * x + torch.randn(x.shape)  # carries (almost) nothing about x
    bits = reconstruction_loss(x, z_0, lam_0) / (dims * LN2)
    torch.testing.assert_close(bits, torch.full_like(bits, 8.0), rtol=0, atol=1e-5)

    # the whole bound of a model that knows nothing: schedule far below the data, ε̂ = z/σ
    def knows_nothing(z, lam, c):
        return z / torch.sigmoid(-lam).sqrt().view(-1, 1, 1, 1)

    n = x.shape[0]
    terms = vlb_terms(knows_nothing, x, torch.zeros(n, dtype=torch.long), CFGSchedule(-31.0, -30.0), torch.rand(n),
                      torch.randn(x.shape), torch.randn(x.shape))
    torch.testing.assert_close(terms.total / (dims * LN2), torch.full((n,), 8.0), rtol=0, atol=1e-4)

    # a sharp decoder on the same data costs (almost) nothing
    lam_0 = torch.tensor(13.3)
    z_0 = torch.sigmoid(lam_0).sqrt() * x + torch.sigmoid(-lam_0).sqrt() * torch.randn(x.shape)
    assert float(reconstruction_loss(x, z_0, lam_0).mean()) / (dims * LN2) < 1e-2


def test_grid_convention():
    k = torch.arange(256)
    torch.testing.assert_close(grid_values(), k.float() / 127.5 - 1.0)


# -- Fourier features, model, sampling ------------------------------------------------------------------

def test_fourier_features_values_and_channel_layout():
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    f = fourier_features(z, 7, 8)
    assert f.shape == (2, 12, 4, 4)
    want = []
    for fn in (torch.sin, torch.cos):
        for ch in range(3):
            for n in (7, 8):
                want.append(fn(2.0**n * math.pi * z[:, ch]))
    # sin block then cos block; within each, channel-major then frequency
    order = [f[:, i] for i in range(12)]
    for got, w in zip(order, want):
        torch.testing.assert_close(got, w)


def tiny_unet(num_classes: int = 10) -> UNetConfig:
    return UNetConfig(image_size=28, in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                      attention_resolutions=(), head_channels=8, num_classes=num_classes)


def test_vdm_model_terms_guidance_and_sampling():
    from guidediff.guidance import cfg
    from guidediff.vdm.sample import sample_vdm

    vdm = VDMConfig(schedule_hidden=16)
    torch.manual_seed(0)
    model = VDMModel(vdm_unet_config(tiny_unet(), vdm), vdm)
    assert model.unet.config.extra_input_channels == 4
    x = grid_images(3, shape=(1, 28, 28))
    c = torch.tensor([0, 3, 10])
    terms = model(x, c, torch.rand(3), torch.randn(x.shape), torch.randn(x.shape))
    for t in (terms.prior, terms.reconstruction, terms.diffusion):
        assert t.shape == (3,) and bool(torch.isfinite(t).all())
    terms.total.mean().backward()
    assert model.schedule.gamma_0.grad is not None and model.schedule.w2.grad is not None
    model.eval()
    guided = cfg(model.denoiser, 2.0, model.num_classes)
    assert guided(x, torch.zeros(3), c).shape == x.shape
    imgs = sample_vdm(model, torch.tensor([1, 2]), w=1.0, steps=3)
    assert imgs.shape == (2, 1, 28, 28) and bool(torch.isfinite(imgs).all())


# -- bits/dim CLI -------------------------------------------------------------------------------------

def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fmnist(folder: Path, n: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def _save_tiny_checkpoint(root: Path, vdm: VDMConfig | None) -> Path:
    from guidediff.checkpoint import save_checkpoint
    from guidediff.config import Config
    from guidediff.nets.unet import UNet

    config = Config()
    torch.manual_seed(0)
    if vdm is None:
        config.model = tiny_unet()
        weights = UNet(config.model).state_dict()
    else:
        config.model = vdm_unet_config(tiny_unet(), vdm)
        weights = VDMModel(config.model, vdm).state_dict()
    return save_checkpoint(root / "checkpoints", 1, model=weights, ema=weights,
                           optimizer={"state": {}, "param_groups": []}, state={"config": config.to_dict()})


@pytest.mark.parametrize("kind", ["vdm", "cfg-unet"])
def test_bpd_cli_writes_three_terms(tmp_path, monkeypatch, capsys, kind):
    from guidediff.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "fmnist"
    _fake_fmnist(data)
    ckpt = _save_tiny_checkpoint(tmp_path / "run", VDMConfig(schedule_hidden=8) if kind == "vdm" else None)
    out = tmp_path / "bpd.json"
    rc = main(["bpd", str(tmp_path / "run"), "--n", "6", "--batch-size", "4", "--device", "cpu", "--data-dir",
               str(data), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["terms"]) == {"prior", "reconstruction", "diffusion"}
    total = sum(t["bpd"] for t in result["terms"].values())
    assert math.isfinite(result["bpd"]) and abs(total - result["bpd"]) < 1e-9
    assert result["n"] == 6 and result["bpd_ci95"] > 0 and result["estimator"] == "importance"
    if kind == "cfg-unet":  # evaluated under the CFG schedule it trained with
        assert result["schedule"] == "cfg" and result["lam_max"] == pytest.approx(20.0)
    assert "bits/dim" in capsys.readouterr().out
    # same seed, other batch size: same numbers
    out2 = tmp_path / "bpd2.json"
    main(["bpd", str(ckpt), "--n", "6", "--batch-size", "6", "--device", "cpu", "--data-dir", str(data),
          "--json", str(out2)])
    assert json.loads(out2.read_text())["bpd"] == pytest.approx(result["bpd"], rel=1e-5)


def test_bpd_cli_errors_are_one_line(tmp_path, capsys):
    from guidediff.cli import main

    data = tmp_path / "fmnist"
    _fake_fmnist(data)
    _save_tiny_checkpoint(tmp_path / "run", VDMConfig(schedule_hidden=8))
    rc = main(["bpd", str(tmp_path / "run"), "--n", "99", "--device", "cpu", "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --n 99 exceeds") and err.count("\n") == 1
    assert main(["bpd", str(tmp_path / "nothing"), "--device", "cpu"]) == 2


def test_prior_term_is_the_gaussian_kl():
    x = grid_images(5, shape=(1, 3, 3), seed=4).double()
    for lam_1 in (-10.0, -2.0, 0.0, 3.0):
        a2, s2 = 1 / (1 + math.exp(-lam_1)), 1 / (1 + math.exp(lam_1))
        want = (0.5 * (s2 + a2 * x**2 - 1 - math.log(s2))).flatten(1).sum(1)
        got = prior_loss(x, torch.tensor(lam_1, dtype=torch.float64))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_training_loop_takes_the_vdm_loss_and_the_checkpoint_reloads(tmp_path):
    """guidediff.train with the VDM bound as its loss closure; the checkpoint and the exported
    (float16) model both come back as the same VDM, schedule included."""
    from guidediff.config import Config
    from guidediff.data.images import DatasetArrays
    from guidediff.train import train
    from guidediff.vdm import vdm_loss
    from guidediff.vdm.loading import load_vdm

    rng = np.random.default_rng(0)
    data = DatasetArrays(rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8), np.arange(16) % 10,
                         [str(i) for i in range(10)], 10)
    vdm = VDMConfig(schedule_hidden=16)
    config = Config()
    config.model = vdm_unet_config(tiny_unet(), vdm)
    t = config.train
    t.batch_size, t.steps, t.warmup_steps, t.log_every = 8, 2, 1, 1
    t.device, t.tensorboard, t.compile = "cpu", False, False
    torch.manual_seed(0)
    net = VDMModel(config.model, vdm)
    result = train(config, tmp_path / "run", loss_fn=vdm_loss(vdm, p_uncond=0.1, null_class=10), net=net,
                   dataset=data, sample_fn=lambda *a: None, progress=False)
    assert result.step == 2 and math.isfinite(result.final_loss)
    model, _ = load_vdm(result.checkpoint)
    assert isinstance(model, VDMModel) and model.vdm == vdm and model.unet.config.extra_input_channels == 4
    assert model.schedule.lam_max != 13.3  # the endpoints trained
    exported, _ = load_vdm(result.model_file)
    assert exported.schedule.lam_max == pytest.approx(model.schedule.lam_max, abs=1e-2)


def test_the_bound_of_an_edm_preconditioned_cfg_model_uses_the_denoiser_it_samples_with(tmp_path):
    # the VLB must be that of the ε the model was trained with, not of its raw network
    from guidediff.checkpoint import save_model
    from guidediff.nets.unet import UNet
    from guidediff.precondition import wrap_for_config
    from guidediff.vdm.loading import load_vdm
    from train_helpers import tiny_config

    config = tiny_config("model.num_classes=3", "model.image_size=8", "model.in_channels=1",
                         'diffusion.precondition="edm"')
    torch.manual_seed(0)
    net = UNet(config.model)
    path = save_model(net.state_dict(), config, tmp_path / "edm.safetensors", dtype="float32")
    model, _ = load_vdm(path)
    z, lam, c = torch.randn(2, 1, 8, 8), torch.tensor([-3.0, 2.0]), torch.tensor([0, 2])
    with torch.no_grad():
        expected = wrap_for_config(net.eval(), config.diffusion)(z, lam, c)
        assert torch.allclose(model.denoiser(z, lam, c), expected, atol=1e-6)
        assert not torch.allclose(model.unet(z, lam, c), expected, atol=1e-3)
    shifted = tiny_config("model.num_classes=3", "model.image_size=8", "model.in_channels=1",
                          "diffusion.schedule_shift=2.0")
    path = save_model(net.state_dict(), shifted, tmp_path / "shifted.safetensors", dtype="float32")
    from guidediff.errors import UsageError

    with pytest.raises(UsageError, match="schedule_shift"):
        load_vdm(path)
