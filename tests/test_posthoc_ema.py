"""Post-hoc EMA (EDM2): the discrete per-step weights, the closed-form inner products, the solver
on a real tiny run against directly tracked EMAs, resume, the command and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import tiny_arrays, tiny_config

from guidediff.ema import EMA, power_gamma
from guidediff.errors import UsageError
from guidediff.posthoc_ema import PosthocBasis, power_ema_weights, profile_inner_product, solve_continuous

STEPS, EVERY, SIGMA_MAIN = 24, 3, 0.07  # the run's own EMA (σ_rel 0.07) is the in-between reference
POSTHOC = ("train.posthoc_ema=true", f"train.posthoc_every={EVERY}")


def test_discrete_weights_are_the_ema_class_profile():
    """Feeding θ_τ = e_τ (unit vectors) to the EMA class leaves its per-step weights in the shadow."""
    T, gamma = 50, power_gamma(0.1)
    lin = torch.nn.Linear(T, 1, bias=False).double()
    ema = EMA(lin, sigma_rel=0.1)
    for tau in range(1, T + 1):
        with torch.no_grad():
            lin.weight.zero_()
            lin.weight[0, tau - 1] = 1.0
        ema.update(lin)
        if tau in (1, 7, T):
            shadow = ema.module.weight[0].numpy()
            np.testing.assert_allclose(shadow, power_ema_weights(tau, gamma, T), rtol=0, atol=1e-14)
    assert power_ema_weights(T, gamma).sum() == pytest.approx(1.0, abs=1e-14)


def test_continuous_inner_product_matches_quadrature_and_both_solvers_agree():
    from scipy.integrate import quad

    def p(t, g):
        return lambda tau: (g + 1) / t ** (g + 1) * tau ** g if tau <= t else 0.0

    for (ta, ga), (tb, gb) in [((100, 6.94), (70, 16.97)), ((40, 16.97), (100, 6.94)), ((50, 3.0), (50, 3.0))]:
        numeric = quad(lambda u: p(ta, ga)(u) * p(tb, gb)(u), 0, min(ta, tb), epsabs=0, epsrel=1e-12)[0]
        assert profile_inner_product(ta, ga, tb, gb) == pytest.approx(numeric, rel=1e-9)
    # the continuous profiles approximate the discrete ones: the two solutions agree for long runs
    # (to the size of the fit error: the discrete one is also held to Σx = 1, the paper's is not)
    g1, g2, g_r = power_gamma(0.05), power_gamma(0.10), power_gamma(0.07)
    steps = list(range(200, 2001, 200))
    ts, gammas = steps + steps, [g1] * len(steps) + [g2] * len(steps)
    basis = PosthocBasis(tuple(ts), tuple(gammas))
    x_continuous = solve_continuous(ts, gammas, 2000, g_r)
    np.testing.assert_allclose(basis.coefficients(g_r), x_continuous, atol=1e-3)
    assert basis.fit_error(g_r) < 0.01 and abs(x_continuous.sum() - 1) < 1e-3


def test_basis_reproduces_a_stored_profile_and_fits_between():
    g1, g2 = power_gamma(0.05), power_gamma(0.10)
    steps = list(range(10, 101, 10))
    basis = PosthocBasis(tuple(steps + steps), (g1,) * 10 + (g2,) * 10)
    x = basis.coefficients(g2)
    np.testing.assert_allclose(x, np.eye(20)[19], atol=1e-9)
    assert basis.fit_error(g2) < 1e-12
    assert 1e-4 < basis.fit_error(power_gamma(0.07)) < 0.03
    assert basis.fit_error(power_gamma(0.25)) > basis.fit_error(power_gamma(0.15))


def _profile(ck_path, index: int) -> dict[str, torch.Tensor]:
    from guidediff.checkpoint import read_tensors

    tensors = read_tensors(ck_path / "posthoc_ema.safetensors")
    return {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{index}/")}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _train(run_dir, *overrides, resume=False):
    from guidediff.train import train

    config = tiny_config('train.ema="power"', f"train.ema_sigma_rel={SIGMA_MAIN}", *POSTHOC, f"train.steps={STEPS}",
                         f"train.checkpoint_every={STEPS}", *overrides)
    return train(config, run_dir, dataset=tiny_arrays(), progress=False, resume=resume, sample_fn=lambda *a: None)


@pytest.fixture(scope="module")
def classic_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("posthoc") / "classic"
    _train(run_dir, "train.cuda_graph=false")
    return run_dir


def test_solver_reproduces_tracked_emas_of_a_training_run(classic_run):
    from guidediff.checkpoint import load_checkpoint
    from guidediff.posthoc_snapshots import list_snapshots, posthoc_ema

    snaps = list_snapshots(classic_run)
    assert len(snaps) == 2 * STEPS // EVERY and {s.t for s in snaps} == set(range(EVERY, STEPS + 1, EVERY))
    ck = load_checkpoint(classic_run, parts=("ema",))
    for index, sigma_rel in enumerate((0.05, 0.10)):  # the stored profiles themselves: exact
        weights, info = posthoc_ema(classic_run, sigma_rel)
        assert _max_diff(weights, _profile(ck.path, index)) < 1e-5
    # in between: against the run's own power EMA, tracked directly with σ_rel 0.07
    weights, info = posthoc_ema(classic_run, SIGMA_MAIN)
    err = _max_diff(weights, ck.ema)
    spread = _max_diff(_profile(ck.path, 0), _profile(ck.path, 1))
    print(f"sigma_rel {SIGMA_MAIN}: max |error| {err:.2e}, profiles 0.05 vs 0.10 differ by {spread:.2e}, "
          f"fit {info['fit_error']:.2e}")
    assert info["fit_error"] < 0.02
    # measured 3.8e-6 (spread 1.6e-3, 8 snapshots per profile); an unconstrained fit (Σx ≠ 1) gives 2e-3
    assert err < 1e-4 and err < 0.02 * spread


def test_graph_ready_step_and_resume_keep_the_same_profiles(classic_run, tmp_path):
    """The graph-ready step's device-side updates, interrupted half-way and resumed, give the
    snapshots of the uninterrupted classic run."""
    from guidediff.posthoc_snapshots import SNAPSHOT_DIR, list_snapshots

    run_dir = tmp_path / "eager"
    _train(run_dir, 'train.cuda_graph="eager"', f"train.steps={STEPS // 2}")
    stale = run_dir / SNAPSHOT_DIR / "phema-0009999-gamma6.9372.safetensors"
    stale.write_bytes(b"")  # a snapshot past the checkpoint (a killed run's) is taken again, not kept
    _train(run_dir, 'train.cuda_graph="eager"', resume=True)
    assert not stale.exists()
    from guidediff.checkpoint import read_tensors

    mine, theirs = list_snapshots(run_dir), list_snapshots(classic_run)
    assert [(s.step, s.t, s.gamma) for s in mine] == [(s.step, s.t, s.gamma) for s in theirs]
    for a, b in zip(mine, theirs):
        assert _max_diff(read_tensors(a.path), read_tensors(b.path)) < 1e-6, a.path.name


def test_command_writes_a_loadable_model(classic_run, tmp_path, capsys):
    from guidediff.checkpoint import load_checkpoint
    from guidediff.loading import load_model
    from guidediff.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["posthoc-ema", str(classic_run), "--sigma-rel", "0.1", "--out", str(out), "--dtype", "float32"]) == 0
    net, config = load_model(out)
    ck = load_checkpoint(classic_run, parts=())
    assert _max_diff(net.state_dict(), _profile(ck.path, 1)) < 1e-5
    assert config.train.posthoc_ema
    # an existing file is refused without --overwrite
    assert main(["posthoc-ema", str(classic_run), "--sigma-rel", "0.1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["posthoc-ema", str(classic_run), "--sigma-rel", "0.08", "--out", str(out), "--overwrite"]) == 0
    # so is the .json that save_model writes beside the weights, even when the weights file is new
    (tmp_path / "notes.json").write_text("mine")
    assert main(["posthoc-ema", str(classic_run), "--sigma-rel", "0.1", "--out", str(tmp_path / "notes.safetensors")]) == 2
    assert "notes.json already exists (written beside notes.safetensors)" in capsys.readouterr().err
    assert (tmp_path / "notes.json").read_text() == "mine" and not (tmp_path / "notes.safetensors").exists()


def test_bad_inputs_are_one_line_errors(classic_run, tmp_path, capsys):
    from guidediff.cli import main
    from guidediff.errors import UsageError

    assert main(["posthoc-ema", str(classic_run), "--sigma-rel", "0.27", "--out", str(tmp_path / "a.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "outside what" in err and "they represent sigma_rel" in err
    assert main(["posthoc-ema", str(classic_run), "--sigma-rel", "0.5", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "must lie in" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["posthoc-ema", str(empty), "--sigma-rel", "0.07"]) == 2
    assert "train.posthoc_ema=true" in capsys.readouterr().err
    for item in ("train.posthoc_sigma_rels=[0.05, 0.05]", "train.posthoc_sigma_rels=[0.3]", "train.posthoc_every=0"):
        with pytest.raises(UsageError):
            tiny_config(item)


def test_posthoc_cannot_start_on_a_resumed_run(tmp_path):
    from guidediff.errors import UsageError
    from guidediff.train import train

    config = tiny_config("train.steps=2", "train.checkpoint_every=2")
    train(config, tmp_path / "r", dataset=tiny_arrays(), progress=False, sample_fn=lambda *a: None)
    config = tiny_config("train.steps=3", "train.checkpoint_every=3", *POSTHOC)
    with pytest.raises(UsageError, match="start a new run"):
        train(config, tmp_path / "r", dataset=tiny_arrays(), progress=False, resume=True, sample_fn=lambda *a: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_step_keeps_the_same_profiles_on_cuda(tmp_path):
    """The profiles' updates inside the captured CUDA graph match the uncaptured graph-ready step.
    The two runs' weights themselves differ by GPU rounding (Adam's first steps magnify it: 7e-4
    after 3 steps was seen on the H200), and a profile, a weighted mean of the weights, can differ
    by no more: the bound is twice the weights' difference, far below the profile's own movement,
    which is what a profile left out of the graph would show."""
    from guidediff.checkpoint import latest_checkpoint, read_tensors
    from guidediff.posthoc_snapshots import list_snapshots

    runs, weights = {}, {}
    for mode in ("true", '"eager"'):
        run_dir = tmp_path / mode.strip('"')
        _train(run_dir, f"train.cuda_graph={mode}", "train.device=cuda", "train.mixed_precision=no",
               "train.compile=false", "train.deterministic=true")
        runs[mode] = list_snapshots(run_dir)
        weights[mode] = read_tensors(latest_checkpoint(run_dir / "checkpoints") / "model.safetensors")
    rounding = _max_diff(*weights.values())
    first = read_tensors(runs["true"][0].path)
    moved = max(_max_diff(read_tensors(s.path), first) for s in runs["true"])
    assert moved > 3 * (2 * rounding + 1e-5), "the profiles hardly moved: the test cannot tell them apart"
    for a, b in zip(*runs.values()):
        assert (a.step, a.gamma) == (b.step, b.gamma)
        assert _max_diff(read_tensors(a.path), read_tensors(b.path)) <= 2 * rounding + 1e-5, a.path.name


def _buffered_snapshots(folder, steps: int = 12, every: int = 2):
    """A tiny module with a non-float buffer (as the VDM's config buffer), its two profiles stored
    every ``every`` steps, and a directly tracked σ_rel 0.07 power EMA beside them."""
    from torch import nn

    from guidediff.ema import EMA
    from guidediff.posthoc_snapshots import PosthocEMA

    torch.manual_seed(0)
    module = nn.Linear(3, 2)
    module.register_buffer("tag", torch.tensor([7, 1], dtype=torch.uint8))
    profiles = PosthocEMA(module, [0.05, 0.10], every, folder / "posthoc")
    direct = EMA(module, sigma_rel=0.07)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        for ema in (*profiles.emas, direct):
            ema.update(module)
        if profiles.due(step, step == steps):
            profiles.snapshot(step)
    return direct


def test_a_model_with_a_buffer_is_solved_and_keeps_its_buffer(tmp_path):
    from guidediff.posthoc_snapshots import posthoc_ema

    direct = _buffered_snapshots(tmp_path)
    weights, info = posthoc_ema(tmp_path, 0.07)
    assert weights["tag"].tolist() == [7, 1] and weights["tag"].dtype == torch.uint8
    want = direct.state_dict()
    assert max((weights[k] - want[k]).abs().max().item() for k in ("weight", "bias")) < 0.05
    assert info["fit_error"] < 0.05 and info["snapshots"] == 12


def test_snapshot_folder_mistakes_are_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    from guidediff.posthoc_snapshots import SNAPSHOT_FORMAT, posthoc_ema

    _buffered_snapshots(tmp_path)
    folder = tmp_path / "posthoc"
    damaged = folder / "phema-0000099-gamma6.9372.safetensors"
    save_file({"weight": torch.zeros(2, 3)}, str(damaged), metadata={"format": SNAPSHOT_FORMAT})
    with pytest.raises(UsageError, match="damaged post-hoc EMA snapshot"):
        posthoc_ema(tmp_path, 0.07)
    # metadata that parses but is not sane: a NaN γ, a step 0
    for bad in ({"step": "99", "t": "99", "gamma": "nan", "sigma_rel": "0.05"},
                {"step": "0", "t": "0", "gamma": "6.9372", "sigma_rel": "0.05"}):
        save_file({"weight": torch.zeros(2, 3)}, str(damaged), metadata={"format": SNAPSHOT_FORMAT, **bad})
        with pytest.raises(UsageError, match="damaged post-hoc EMA snapshot .*remove it"):
            posthoc_ema(tmp_path, 0.07)
    damaged.unlink()
    (folder / "phema-0000002-gamma6.9372.safetensors").unlink()
    other = _buffered_snapshots(tmp_path / "other")  # noqa: F841 - another run's snapshot, other shapes below
    import shutil

    from guidediff.checkpoint import read_tensors, safetensors_header, save_tensors_atomic

    src = tmp_path / "other" / "posthoc" / "phema-0000002-gamma6.9372.safetensors"
    tensors = read_tensors(src)
    tensors["weight"] = torch.zeros(4, 3)
    save_tensors_atomic(tensors, folder / src.name, metadata=safetensors_header(src)["__metadata__"])
    with pytest.raises(UsageError, match="holds other weights than the other snapshots"):
        posthoc_ema(tmp_path, 0.07)
    shutil.rmtree(tmp_path / "other")


def test_profiles_that_would_share_a_snapshot_file_are_refused():
    with pytest.raises(UsageError, match="too close to keep apart"):
        tiny_config("train.posthoc_ema=true", "train.posthoc_sigma_rels=[0.1, 0.10000001]")
    tiny_config("train.posthoc_ema=true", "train.posthoc_sigma_rels=[0.1, 0.101]")


def test_representable_sigma_rels_are_reported_as_separate_intervals():
    """Only the final snapshots of two distant profiles: each represents a narrow interval around
    itself, and the gap between them is not claimed."""
    from guidediff.posthoc_snapshots import representable_ranges

    basis = PosthocBasis((2000, 2000), (power_gamma(0.03), power_gamma(0.25)))
    spans = representable_ranges(basis, 0.05)
    assert len(spans) == 2
    (lo1, hi1), (lo2, hi2) = spans
    assert lo1 <= 0.03 <= hi1 < 0.1 < lo2 <= 0.25 <= hi2
    for lo, hi in spans:  # every grid point inside fits, the neighbours outside do not
        assert basis.fit_error(power_gamma(lo)) <= 0.05 and basis.fit_error(power_gamma(hi)) <= 0.05
        assert lo - 0.0025 < 0.005 or basis.fit_error(power_gamma(lo - 0.0025)) > 0.05
        assert basis.fit_error(power_gamma(hi + 0.0025)) > 0.05


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.07, 0.10, 0.15, 0.25])
def test_gamma_is_the_root_of_edm2s_cubic(sigma_rel):
    # σ_rel² = (γ+1)/((γ+2)²(γ+3))  ⇔  γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²) = 0 (EDM2, eq. 3), one real root > 0
    s2 = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    want = max(r.real for r in roots if abs(r.imag) < 1e-9)
    assert power_gamma(sigma_rel) == pytest.approx(want, rel=1e-10)


def test_fit_error_is_the_residual_of_a_constrained_least_squares_solve():
    """Against an independent float64 solve: minimise ‖A x − w‖ subject to Σx = 1 through the
    KKT system, then the relative residual directly."""
    g1, g2, g_r = power_gamma(0.05), power_gamma(0.10), power_gamma(0.07)
    steps = list(range(30, 301, 30))
    ts, gammas = steps + steps, [g1] * len(steps) + [g2] * len(steps)
    basis = PosthocBasis(tuple(ts), tuple(gammas))
    T = max(ts)
    A = np.stack([power_ema_weights(t, g, T) for t, g in zip(ts, gammas)], axis=1)
    w = power_ema_weights(T, g_r, T)
    n = A.shape[1]
    kkt = np.block([[A.T @ A, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
    x = np.linalg.lstsq(kkt, np.concatenate([A.T @ w, [1.0]]), rcond=None)[0][:n]
    want = np.linalg.norm(A @ x - w) / np.linalg.norm(w)
    assert basis.fit_error(g_r) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(A @ basis.coefficients(g_r), A @ x, atol=1e-10)
