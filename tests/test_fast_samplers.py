"""The fast ODE solvers (dpmpp-2m, heun, unipc) and the step grids.

- Convergence order with exact Gaussian-mixture scores: the same noise with K steps against a
  fine-step reference, on the uniform-λ grid; log-log slope ≤ −1.8 for the second-order solvers,
  about −1 for DDIM.
- DPM-Solver++(2M) equals k-diffusion's ``sample_dpmpp_2m`` (an independent implementation, in
  EDM's σ = e^{−λ/2} variables) to 1e-5 in float64; skipped when k-diffusion is not installed.
- Every sampler runs with every guidance method on a tiny image UNet and gives finite images.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from guidediff import guidance, samplers, schedules
from guidediff.data.toy2d import load_toy
from guidediff.errors import UsageError
from guidediff.guidance import CountingDenoiser
from guidediff.samplers.common import dynamic_threshold

FAST = ["dpmpp-2m", "heun", "unipc"]


@pytest.fixture(scope="module")
def gmm3():
    return load_toy("gmm3")


def _lams(steps: int, kind: str = "lambda") -> torch.Tensor:
    return schedules.lam_grid(schedules.make_schedule("cfg"), steps, kind=kind, dtype=torch.float64)


def _run(denoiser, c, sampler, steps, *, kind="lambda", seed=0, **options):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(c), 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        return samplers.sample(denoiser, z, _lams(steps, kind), c, sampler=sampler, generator=gen, **options)


def _slope(steps, errs) -> float:
    log_s = torch.tensor(steps, dtype=torch.float64).log()
    log_e = torch.tensor(errs, dtype=torch.float64).log()
    return float(((log_s - log_s.mean()) * (log_e - log_e.mean())).sum() / ((log_s - log_s.mean()) ** 2).sum())


@pytest.fixture(scope="module")
def orders(gmm3):
    m = gmm3
    c = torch.arange(300) % m.num_classes
    den = guidance.cfg(m, 1.0, m.null_class)
    ref = _run(den, c, "unipc", 4096)
    steps = [16, 32, 64, 128]
    out = {}
    for sampler in ["ddim", *FAST]:
        errs = [float((_run(den, c, sampler, k) - ref).norm(dim=1).mean()) for k in steps]
        out[sampler] = _slope(steps, errs)
        print(f"\n{sampler}: error vs steps {dict(zip(steps, [f'{e:.2e}' for e in errs]))}, slope {out[sampler]:.2f}")
    return out


@pytest.mark.parametrize("sampler", FAST)
def test_fast_samplers_are_second_order(orders, sampler):
    assert orders[sampler] <= -1.8


def test_ddim_is_first_order_on_the_lambda_grid(orders):
    assert 0.8 <= -orders["ddim"] <= 1.3


def _load_k_diffusion_sampling():
    """k-diffusion's sampling.py alone: its package __init__ pulls heavy optional dependencies
    (scikit-image, clean-fid, ...), and sample_dpmpp_2m needs only torch."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install k-diffusion --no-deps)")
    root = Path(list(spec.submodule_search_locations)[0])
    stubs = {"torchdiffeq": types.ModuleType("torchdiffeq"), "torchsde": types.ModuleType("torchsde")}
    stubs["torchdiffeq"].odeint = None
    package = types.ModuleType("_kdiff")
    package.__path__ = [str(root)]
    utils = types.ModuleType("_kdiff.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    saved = {k: sys.modules.get(k) for k in (*stubs, "_kdiff", "_kdiff.utils")}
    sys.modules.update(stubs)
    sys.modules.update({"_kdiff": package, "_kdiff.utils": utils})
    try:
        file_spec = importlib.util.spec_from_file_location("_kdiff.sampling", root / "sampling.py")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


@pytest.mark.parametrize("kind", ["u", "karras"])
def test_dpmpp_2m_equals_k_diffusion(gmm3, kind):
    kd = _load_k_diffusion_sampling()
    m = gmm3
    c = torch.arange(200) % m.num_classes
    den = guidance.cfg(m, 2.0, m.null_class)

    def k_model(x, sigma):  # k-diffusion's denoiser D(x; σ) in EDM's scaled variables x = z/α
        lam = -2.0 * torch.log(sigma)
        alpha = torch.sigmoid(lam[0]).sqrt()
        return x - sigma[0] * den(alpha * x, lam, c)

    lams = _lams(12, kind)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(len(c), 2, generator=gen, dtype=torch.float64)
    ours = samplers.sample(den, z, lams, c, sampler="dpmpp-2m", lower_order_final=False)
    alpha = torch.sigmoid(lams).sqrt()
    theirs = alpha[-1] * kd.sample_dpmpp_2m(k_model, z / alpha[0], torch.exp(-lams / 2), disable=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # not vacuous: the last-step order is visible at this precision
    assert float((samplers.sample(den, z, lams, c, sampler="dpmpp-2m") - theirs).abs().max()) > 1e-5


def test_heun_pays_two_evaluations_but_the_last(gmm3):
    m = gmm3
    c = torch.arange(30) % m.num_classes
    counts = {}
    for sampler in ["ddim", *FAST]:
        counter = CountingDenoiser(m)
        # every step second order here; test_heun_steps_from_above_euler_above_... covers the first-order ones
        _run(counter, c, sampler, 10, **({"euler_above": float("inf")} if sampler == "heun" else {}))
        counts[sampler] = counter.nfe_per_image(len(c))
    assert counts == {"ddim": 10, "dpmpp-2m": 10, "heun": 19, "unipc": 10}


def test_heun_churn_is_stochastic_and_seeded(gmm3):
    m = gmm3
    c = torch.arange(50) % m.num_classes
    plain = _run(m, c, "heun", 20, kind="karras")
    churn = _run(m, c, "heun", 20, kind="karras", s_churn=10.0, s_tmin=0.05, s_tmax=50.0)
    again = _run(m, c, "heun", 20, kind="karras", s_churn=10.0, s_tmin=0.05, s_tmax=50.0)
    torch.testing.assert_close(churn, again)
    assert float((churn - plain).abs().max()) > 1e-3 and bool(torch.isfinite(churn).all())


def test_dynamic_threshold():
    x = torch.tensor([[0.5, -0.2, 0.9], [3.0, -1.5, 0.0]])
    out = dynamic_threshold(x, 0.99)
    torch.testing.assert_close(out[0], x[0])  # s = max(1, ·) leaves a sample inside [−1, 1] alone
    s = float(torch.quantile(x[1].abs(), 0.99))
    torch.testing.assert_close(out[1], x[1].clamp(-s, s) / s)
    assert float(out.abs().max()) <= 1.0


def test_grids():
    sch = schedules.make_schedule("cfg")
    for kind in schedules.GRIDS:
        g = schedules.lam_grid(sch, 7, kind=kind, dtype=torch.float64)
        assert len(g) == 8 and bool((g[1:] > g[:-1]).all())
        assert float(g[0]) == pytest.approx(-20.0) and float(g[-1]) == pytest.approx(20.0)
    torch.testing.assert_close(schedules.lam_grid(sch, 4, kind="lambda", dtype=torch.float64),
                               torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0], dtype=torch.float64))
    sig = torch.exp(-schedules.lam_grid(sch, 6, kind="karras", dtype=torch.float64) / 2)
    steps = sig ** (1 / 7)  # EDM's grid is uniform in σ^{1/ρ}
    torch.testing.assert_close(steps[1:] - steps[:-1], (steps[1] - steps[0]).expand(6))
    with pytest.raises(UsageError, match="unknown grid"):
        schedules.lam_grid(sch, 4, kind="edm")


EDM_SIGMA_MAX = 80.0  # Karras et al. 2022, Table 1: λ = −2·log 80 ≈ −8.76


@pytest.mark.parametrize("name", ["cfg", "linear"])
def test_sigma_max_starts_every_grid_there(name):
    sch = schedules.make_schedule(name)
    lam_end = float(sch.lam(torch.zeros(1, dtype=torch.float64)))
    for kind in schedules.GRIDS:
        g = schedules.lam_grid(sch, 6, kind=kind, sigma_max=EDM_SIGMA_MAX, dtype=torch.float64)
        assert len(g) == 7 and bool((g[1:] > g[:-1]).all()), kind
        assert float(g[0]) == -2.0 * math.log(EDM_SIGMA_MAX) and float(g[-1]) == lam_end, kind
    # each grid keeps its spacing over the shorter range: uniform in u, in λ, in σ^{1/ρ}
    u = sch.u_of_lam(schedules.lam_grid(sch, 6, kind="u", sigma_max=EDM_SIGMA_MAX, dtype=torch.float64))
    torch.testing.assert_close(u[1:] - u[:-1], (u[1] - u[0]).expand(6))
    lam = schedules.lam_grid(sch, 6, kind="lambda", sigma_max=EDM_SIGMA_MAX, dtype=torch.float64)
    torch.testing.assert_close(lam, torch.linspace(-2.0 * math.log(EDM_SIGMA_MAX), lam_end, 7, dtype=torch.float64))
    root = torch.exp(-schedules.lam_grid(sch, 6, kind="karras", sigma_max=EDM_SIGMA_MAX, dtype=torch.float64) / 14)
    assert float(root[0]) == pytest.approx(EDM_SIGMA_MAX ** (1 / 7), rel=1e-12)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1] - root[0]).expand(6))
    # and sigma_min ends it likewise
    g = schedules.lam_grid(sch, 4, kind="karras", sigma_max=EDM_SIGMA_MAX, sigma_min=0.05, dtype=torch.float64)
    assert float(g[-1]) == -2.0 * math.log(0.05)


def test_sigma_max_none_is_the_full_grid():
    sch = schedules.make_schedule("cfg")
    ends = sch.lam(torch.tensor([1.0, 0.0], dtype=torch.float64))
    today = {  # the grids as they were before sigma_max, recomputed here
        "u": sch.lam(torch.linspace(1.0, 0.0, 6, dtype=torch.float64)),
        "lambda": torch.linspace(float(ends[0]), float(ends[1]), 6, dtype=torch.float64),
        "karras": -2.0 * torch.log(schedules.karras_sigmas(math.exp(-float(ends[1]) / 2),
                                                           math.exp(-float(ends[0]) / 2), 5)),
    }
    today["karras"][0], today["karras"][-1] = ends[0], ends[1]
    for kind in schedules.GRIDS:
        assert torch.equal(schedules.lam_grid(sch, 5, kind=kind, sigma_max=None), today[kind].float()), kind
        assert torch.equal(schedules.lam_grid(sch, 5, kind=kind, dtype=torch.float64), today[kind]), kind
        # σ_max at the schedule's own start (σ/α = e^10 at λ = −20) truncates nothing
        torch.testing.assert_close(schedules.lam_grid(sch, 5, kind=kind, sigma_max=math.exp(10.0),
                                                      dtype=torch.float64), today[kind], rtol=0, atol=1e-9)


class _OwnGrid:
    """A schedule that brings its own discrete u grid (as a diffusers scheduler's timesteps do)."""

    def __init__(self):
        self.inner = schedules.make_schedule("cfg")

    def lam(self, u):
        return self.inner.lam(u)

    def lam_grid(self, steps, *, dtype=torch.float32, device=None):
        return self.inner.lam(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("kwargs, words", [
    ({"sigma_max": 1e6}, "sigma_max must lie in (4.54e-05, 22026.5]"),
    ({"sigma_max": 1e-5}, "sigma_max must lie in"),
    ({"sigma_max": 0.0}, "sigma_max must be a positive number"),
    ({"sigma_max": float("nan")}, "sigma_max must be a positive number"),
    ({"sigma_max": 80.0, "sigma_min": 100.0}, "sigma_min must lie in"),
    ({"sigma_min": 1e-9}, "sigma_min must lie in"),
])
def test_bad_sigma_max_is_a_one_line_usage_error(kwargs, words):
    for kind in schedules.GRIDS:
        with pytest.raises(UsageError) as info:
            schedules.lam_grid(schedules.make_schedule("cfg"), 5, kind=kind, **kwargs)
        assert words in str(info.value) and "\n" not in str(info.value)


def test_sigma_max_refuses_a_schedules_own_discrete_grid():
    with pytest.raises(UsageError, match="lambda or karras grid"):
        schedules.lam_grid(_OwnGrid(), 5, kind="u", sigma_max=EDM_SIGMA_MAX)
    assert float(schedules.lam_grid(_OwnGrid(), 5, kind="karras", sigma_max=EDM_SIGMA_MAX)[0]) == pytest.approx(
        -2.0 * math.log(EDM_SIGMA_MAX))


def _oracle_run(den, c, sampler, steps, kind, sigma_max=None):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(len(c), 2, generator=gen, dtype=torch.float64)  # the same N(0, I) start whatever λ_0
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), steps, kind=kind, sigma_max=sigma_max,
                              dtype=torch.float64)
    with torch.no_grad():
        return samplers.sample(den, z, lams, c, sampler=sampler, generator=gen)


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_sigma_max_80_helps_five_karras_steps_and_n01_stays_the_right_start(gmm3, w):
    m = gmm3
    c = torch.arange(300) % m.num_classes
    den = guidance.cfg(m, w, m.null_class)
    ref = _oracle_run(den, c, "unipc", 512, "lambda")  # the ODE from λ = −20

    def err(x):
        return float((x - ref).norm(dim=1).mean())

    # N(0, I) is the VP marginal at σ/α = 80 up to α² ≈ 1.6e-4: the ODE started there lands where the
    # full one does (seen: 0.007 at w = 0, 0.011 at w = 1); at σ/α = 2 (α² = 0.2) it does not (0.3-0.4)
    assert err(_oracle_run(den, c, "unipc", 512, "lambda", EDM_SIGMA_MAX)) < 0.03
    assert err(_oracle_run(den, c, "unipc", 512, "lambda", 2.0)) > 0.2
    # 5 dpmpp-2m steps on the karras grid: from σ/α = e^10 two steps go above 800 (seen: error
    # 0.45 at w = 0, 0.51 at w = 1); from 80 they land far closer (0.04, 0.14)
    full = err(_oracle_run(den, c, "dpmpp-2m", 5, "karras"))
    truncated = err(_oracle_run(den, c, "dpmpp-2m", 5, "karras", EDM_SIGMA_MAX))
    assert truncated < 0.5 * full, (truncated, full)


def test_fast_sampler_input_errors(gmm3):
    z, c = torch.randn(4, 2), torch.zeros(4, dtype=torch.int64)
    lams = _lams(5).float()
    for sampler in FAST:
        with pytest.raises(UsageError, match="increase"):
            samplers.sample(gmm3, z, lams.flip(0), c, sampler=sampler)
        with pytest.raises(UsageError, match="threshold"):
            samplers.sample(gmm3, z, lams, c, sampler=sampler, threshold=1.5)
    with pytest.raises(UsageError, match="s_churn"):
        samplers.sample(gmm3, z, lams, c, sampler="heun", s_churn=-1.0)


@pytest.fixture(scope="module")
def tiny_unets():
    from guidediff.nets.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(image_size=8, in_channels=1, num_classes=3, base_channels=8, channel_mult=(1,),
                        num_res_blocks=1, attention_resolutions=(), dropout=0.0, head_channels=8)
    nets = []
    for _ in range(2):
        net = UNet(config)
        for p in net.parameters():  # ADM zero-inits the output: give the net a non-trivial ε
            torch.nn.init.normal_(p, std=0.05)
        nets.append(net.eval())
    return nets


def _guided(method: str, net, guide, w: float):
    """The registry's method around ``net`` (defaults, plus a guidance interval that bites)."""
    from guidediff.guidance.registry import GuidanceContext, get_guidance

    spec = get_guidance(method)
    options = spec.resolve({"lam_lo": -5.0, "lam_hi": 5.0} if method == "interval" else {})
    context = GuidanceContext(guide=guide, grad_log_prob=lambda z, lam, c: -0.1 * z)
    if method == "distilled":  # a student takes w as an input: stand one in from the plain net
        return spec.build(lambda z, lam, c, weights: net(z, lam, c), w, 3, context, **options)
    return spec.build(net, w, 3, context, **options)


@pytest.mark.parametrize("sampler", list(samplers.SAMPLERS))
def test_every_sampler_runs_every_guidance_on_images(tiny_unets, sampler):
    from guidediff.guidance.registry import GUIDANCE

    net, guide = tiny_unets
    c = torch.tensor([0, 1, 2, 0])
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), 2, kind="karras")
    runs = [("cfg", w) for w in (0.0, 1.0, 3.0)] + [(m, 3.0) for m in GUIDANCE if m != "cfg"]
    for method, w in runs:
        den = _guided(method, net, guide, w)
        options = {"clip_x": 1.0, **getattr(den, "sampler_options", {})}
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x = samplers.sample(den, torch.randn(4, 1, 8, 8, generator=gen), lams, c, sampler=sampler,
                                generator=gen, **options)
        assert x.shape == (4, 1, 8, 8) and bool(torch.isfinite(x).all()), (method, w)


def test_heun_steps_from_above_euler_above_are_first_order():
    # our grids start at sigma/alpha = e^10; a trapezoid across sigma ratios of hundreds saturated real samples
    from guidediff.guidance import CountingDenoiser
    from guidediff.samplers import get_sampler

    lams = torch.linspace(-20.0, 8.0, 9)
    above = int((torch.exp(-0.5 * lams[:-1]) > 80.0).sum())
    assert 0 < above < 8
    for euler_above, expected in ((80.0, 2 * 8 - 1 - above), (float("inf"), 2 * 8 - 1)):
        counter = CountingDenoiser(lambda z, lam, c: 0.1 * z)
        get_sampler("heun").fn(counter, torch.randn(3, 2), lams, torch.zeros(3, dtype=torch.long),
                               euler_above=euler_above)
        assert counter.nfe_per_image(3) == expected
