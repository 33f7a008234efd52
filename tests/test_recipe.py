"""Recipe levers (issue 15): each neutral setting reproduces today's loss, EDM preconditioning
agrees across parametrisations, the LR and EMA profiles, and old configs still load and sample."""

from __future__ import annotations

import math

import pytest
import torch

from train_helpers import tiny_arrays, tiny_config

from guidediff.config import Config
from guidediff.diffusion import eps_to_x, v_to_x
from guidediff.losses import cfg_objective, draw_noise, eps_loss, lognormal_lam, loss_weight
from guidediff.lr_schedule import lr_factor
from guidediff.nets.unet import UNet, UNetConfig
from guidediff.precondition import edm_coefficients, preconditioned, wrap_for_config
from guidediff.schedules import make_schedule, schedule_from_config


def _tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig(image_size=8, in_channels=1, num_classes=3, base_channels=16, channel_mult=(1, 2),
                     num_res_blocks=1, attention_resolutions=(), head_channels=16, dropout=0.0)
    return UNet(cfg).eval()


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    c = torch.randint(0, 3, (6,), generator=g)
    noise = draw_noise(6, (1, 8, 8), p_uncond=0.3, generator=g)
    return x, c, noise


def test_neutral_recipe_reproduces_todays_loss():
    net, (x, c, noise) = _tiny_unet(), _batch()
    today = eps_loss(net, x, c, make_schedule("cfg", -20.0, 20.0), noise, null_class=3)
    d = Config().diffusion
    d.lam_min, d.lam_max = -20.0, 20.0
    # every lever spelled out at its neutral value
    d.schedule_shift, d.precondition, d.loss_weight, d.lam_sampling = 1.0, "none", "eps", "schedule"
    new = cfg_objective(d, 3)(net, x, c, noise)
    assert abs(float(new.detach()) - float(today.detach())) < 1e-6
    assert float(new.detach()) > 0


def test_shift_one_and_neutral_weights_are_exact():
    u = torch.rand(100, dtype=torch.float64)
    base, shifted = make_schedule("cfg"), make_schedule("cfg", shift=1.0)
    assert torch.equal(base.lam(u), shifted.lam(u))
    s = make_schedule("cfg", -15.0, 15.0, shift=2.0)
    lam = s.lam(u)
    assert float(s.lam(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(15.0)
    assert float(s.lam(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(-15.0)
    assert torch.allclose(s.u_of_lam(lam), u, atol=1e-9)
    # interior: the shifted cosine is the plain one plus 2·log s (up to the truncation)
    plain = make_schedule("cfg", -15.0 - 2 * math.log(2), 15.0 - 2 * math.log(2))
    assert torch.allclose(lam, plain.lam(u) + 2 * math.log(2.0), atol=1e-9)


@pytest.mark.parametrize("kind,expect", [("edm", lambda l: 1 + math.exp(-l) / 0.25),
                                         ("min_snr", lambda l: min(1.0, 5 * math.exp(-l))),
                                         ("v", lambda l: 1 + math.exp(-l))])
def test_loss_weights(kind, expect):
    lam = torch.tensor([-3.0, 0.0, 1.0, 4.0], dtype=torch.float64)
    got = loss_weight(kind, sigma_data=0.5, gamma=5.0)(lam)
    assert torch.allclose(got, torch.tensor([expect(float(v)) for v in lam], dtype=torch.float64))


def test_v_weight_is_the_v_loss():
    """‖v̂ − v‖² equals (1 + e^{−λ})·‖ε̂ − ε‖² for v̂ from the same x̂."""
    from guidediff.diffusion import v_from, x_to_eps

    g = torch.Generator().manual_seed(0)
    z, eps, eps_hat = (torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    lam = torch.tensor([-2.0, 0.0, 1.5, 3.0], dtype=torch.float64)
    x, x_hat = eps_to_x(z, eps, lam), eps_to_x(z, eps_hat, lam)
    lhs = (v_from(x_hat, x_to_eps(z, x_hat, lam), lam) - v_from(x, eps, lam)).pow(2).sum((1, 2, 3))
    rhs = loss_weight("v")(lam) * (eps_hat - eps).pow(2).sum((1, 2, 3))
    assert torch.allclose(lhs, rhs)


def test_lognormal_lam_matches_edm_density():
    u = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    lam = lognormal_lam(u, -1.2, 1.2, -40.0, 40.0)
    log_sigma = -lam / 2  # ln σ_e
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=1e-3)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=1e-2)
    clamped = lognormal_lam(torch.tensor([0.0, 1.0], dtype=torch.float64), -1.2, 1.2, -20.0, 20.0)
    assert clamped.tolist() == [20.0, -20.0]


def test_edm_preconditioning_same_prediction_in_every_parametrisation():
    net = _tiny_unet().double()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    lam = torch.tensor([-12.0, -3.0, 0.0, 2.5, 12.0], dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 3, 1])
    sd = 0.5
    eps = preconditioned(net, sd, "eps")(z, lam, c)
    x = preconditioned(net, sd, "x")(z, lam, c)
    v = preconditioned(net, sd, "v")(z, lam, c)
    # EDM Table 1 directly: D = c_skip·z_e + c_out·F(c_in·z_e), z_e = z/α
    alpha = torch.sigmoid(lam).sqrt()[:, None, None, None]
    c_skip, c_out, c_in, _ = (t[:, None, None, None] for t in edm_coefficients(lam, sd))
    z_e = z / alpha
    direct = c_skip * z_e + c_out * net(c_in * z_e, lam, c)
    assert torch.allclose(x, direct, atol=1e-9)
    assert torch.allclose(eps_to_x(z, eps, lam), direct, atol=1e-7)
    assert torch.allclose(v_to_x(z, v, lam), direct, atol=1e-7)


def test_wrap_is_identity_without_preconditioning():
    net = _tiny_unet()
    assert wrap_for_config(net, Config().diffusion) is net


def test_lr_factor_constant_is_todays_warmup():
    for warmup in (0, 1, 10):
        for s in range(30):
            today = min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
            assert lr_factor(s, warmup=warmup, total=30) == today
    assert lr_factor(9, warmup=10, total=110, decay="cosine", final=0.1) == 1.0
    assert lr_factor(109, warmup=10, total=110, decay="cosine", final=0.1) == pytest.approx(0.1)
    assert lr_factor(59, warmup=10, total=110, decay="cosine", final=0.1) == pytest.approx(0.55)
    assert lr_factor(59, warmup=10, total=110, decay="linear", final=0.0) == pytest.approx(0.5)
    assert lr_factor(500, warmup=10, total=110, decay="linear", final=0.2) == pytest.approx(0.2)


def test_power_ema_gamma_and_profile():
    from guidediff.ema import EMA, power_gamma

    # EDM2's quoted pairs: σ_rel 0.05 ↔ γ 16.97, 0.10 ↔ γ 6.94
    assert power_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert power_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    # the power EMA is the τ^γ-weighted mean of the iterates
    lin = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(lin, sigma_rel=0.1)
    values = torch.randn(50, dtype=torch.float64)
    with torch.no_grad():
        for v in values:
            lin.weight.fill_(float(v))
            ema.update(lin)
    gamma = power_gamma(0.1)
    tau = torch.arange(1, 51, dtype=torch.float64)
    beta = (1 - 1 / tau) ** (gamma + 1)
    # weight of iterate τ: (1 − β_τ)·Π_{s>τ} β_s, close to the continuous profile τ^γ
    weights = (1 - beta) * torch.flip(torch.cumprod(torch.flip(torch.cat([beta[1:], beta.new_ones(1)]), [0]), 0), [0])
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float(ema.module.weight) == pytest.approx(float((weights * values).sum()), abs=1e-5)
    profile = tau**gamma / (tau**gamma).sum()
    assert float((weights - profile).abs().sum()) < 0.1


def test_old_config_without_the_options_loads_and_samples_identically(tmp_path):
    from guidediff.generation import generate

    config = tiny_config()
    old = config.to_dict()
    for key in ("schedule_shift", "precondition", "sigma_data", "loss_weight", "min_snr_gamma", "lam_sampling",
                "p_mean", "p_std"):
        del old["diffusion"][key]
    for key in ("lr_schedule", "lr_final", "ema", "ema_sigma_rel"):
        del old["train"][key]
    loaded = Config.from_dict(old)
    loaded.model.num_classes = 3
    assert loaded.diffusion == Config.from_dict(config.to_dict()).diffusion
    net = _tiny_unet()
    a = generate(net, loaded, [0, 1], [0.0, 2.0], 2, steps=3, device="cpu", progress=False)["x"]
    # the sampler a pre-option build ran: the raw net on the unshifted schedule
    plain = make_schedule(loaded.diffusion.schedule, loaded.diffusion.lam_min, loaded.diffusion.lam_max)
    assert schedule_from_config(loaded.diffusion) == plain
    b = generate(net, loaded, [0, 1], [0.0, 2.0], 2, steps=3, device="cpu", progress=False)["x"]
    assert (a == b).all()
    edm = Config.from_dict({**old, "diffusion": {**old["diffusion"], "precondition": "edm"}})
    edm.model.num_classes = 3
    e = generate(net, edm, [0, 1], [0.0, 2.0], 2, steps=3, device="cpu", progress=False)["x"]
    assert not (a == e).all()  # the option reaches the sampler


@pytest.mark.parametrize("overrides", [
    ("diffusion.precondition=\"edm\"", "diffusion.loss_weight=\"edm\"", "diffusion.lam_sampling=\"lognormal\"",
     "train.lr_schedule=\"cosine\"", "train.ema=\"power\""),
    ("diffusion.loss_weight=\"min_snr\"", "diffusion.schedule_shift=2.0", "train.lr_schedule=\"linear\""),
])
def test_levers_train_and_resume(tmp_path, overrides):
    from guidediff.train import train

    config = tiny_config(*overrides)
    result = train(config, tmp_path / "run", dataset=tiny_arrays(), progress=False)
    assert result.finished and math.isfinite(result.final_loss)
    config.train.steps = 8
    again = train(config, tmp_path / "run", dataset=tiny_arrays(), progress=False, resume=True)
    assert again.step == 8


def test_bad_lever_values_are_one_line_errors():
    from guidediff.errors import UsageError

    for item in ("diffusion.loss_weight=\"snr\"", "diffusion.precondition=\"karras\"", "train.lr_schedule=\"step\"",
                 "diffusion.schedule_shift=0.0", "train.ema_sigma_rel=0.5"):
        with pytest.raises(UsageError):
            tiny_config(item)
    with pytest.raises(UsageError):
        tiny_config("diffusion.schedule=\"cosine\"", "diffusion.schedule_shift=2.0")


def test_power_ema_same_in_the_graph_ready_step(tmp_path):
    """The device-side EMA of the graph-ready step follows the power profile like EMA.update."""
    from guidediff.loading import load_model
    from guidediff.train import train

    weights = []
    for mode in ("false", "\"eager\""):
        config = tiny_config('train.ema="power"', "train.ema_sigma_rel=0.1", f"train.cuda_graph={mode}",
                             "train.steps=4", "train.checkpoint_every=4")
        train(config, tmp_path / mode.strip('"'), dataset=tiny_arrays(), progress=False)
        weights.append(load_model(tmp_path / mode.strip('"'), "cpu")[0].state_dict())
    for k, v in weights[0].items():
        assert torch.allclose(v.float(), weights[1][k].float(), atol=1e-6), k


def test_an_edm_preconditioned_guide_is_sampled_with_its_preconditioning(tmp_path):
    # autoguidance with the model itself as guide is the plain conditional model, whatever w
    from guidediff.checkpoint import save_model
    from guidediff.loading import load_model
    from guidediff.generation import generate
    from guidediff.nets.unet import UNet
    from train_helpers import tiny_config

    config = tiny_config("model.num_classes=3", "model.image_size=8", "model.in_channels=1",
                         'diffusion.precondition="edm"')
    torch.manual_seed(0)
    path = save_model(UNet(config.model).state_dict(), config, tmp_path / "edm.safetensors", dtype="float32")
    net, config = load_model(path)
    guide, _ = load_model(path)
    kw = dict(steps=3, device="cpu", progress=False, bf16=False)
    plain = generate(net, config, [0, 2], [0.0], 2, **kw)["x"]
    auto = generate(net, config, [0, 2], [2.0], 2, guidance="autoguidance", guide_net=guide, **kw)["x"]
    assert (plain.astype(int) - auto.astype(int)).__abs__().max() <= 1


def test_shifted_cosine_keeps_its_ends_and_inverts_in_float64():
    # simple diffusion's shift: same λ range, the density in λ moved by 2·log s
    import math

    from guidediff.schedules import make_schedule

    plain, shifted = make_schedule("cfg", -20.0, 20.0), make_schedule("cfg", -20.0, 20.0, 2.0)
    u = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    lam = shifted.lam(u)
    assert torch.allclose(lam[[0, -1]], torch.tensor([20.0, -20.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(shifted.u_of_lam(lam), u, atol=1e-9)
    h = 1e-6
    fd = (shifted.lam(u[1:-1] + h) - shifted.lam(u[1:-1] - h)) / (2 * h)
    assert torch.allclose(shifted.dlam_du(u[1:-1]), fd, rtol=1e-5)
    assert bool((shifted.lam(u[1:-1]) > plain.lam(u[1:-1])).all())  # more steps at high SNR
    # in the middle, where truncation barely matters, the shift is +2·log s
    assert float(shifted.lam(torch.tensor(0.5, dtype=torch.float64)) - plain.lam(torch.tensor(0.5, dtype=torch.float64))) \
        == pytest.approx(2 * math.log(2.0), abs=0.05)


def test_cosine_and_linear_lr_decay_in_closed_form():
    from guidediff.lr_schedule import lr_factor

    kw = dict(warmup=100, total=1100, final=0.1)
    assert lr_factor(49, decay="cosine", **kw) == pytest.approx(0.5)            # warm-up: 50/100
    assert lr_factor(599, decay="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(π/2) = 0
    assert lr_factor(1099, decay="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(5000, decay="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(349, decay="linear", **kw) == pytest.approx(1 - 0.9 * 0.25)
