"""`guidediff toy` end to end, in-process through guidediff.cli.main.

Thresholds for the trained MLP (2000 steps, batch 512, ~15 s on one core): the sliced W₂ between
its guided samples and the exact-score sampler's (same noise, same sampler) must stay below 0.3 for
every class and w ∈ {0, 1, 3}. Measured: ≈ 0.02 at w = 0, ≈ 0.05 at w = 1, 0.11–0.19 at w = 3
(guidance multiplies the model's ε error by up to 1 + 2w). The exact samples at w = 0 and w = 3 are
≈ 0.76 apart, so a model that ignores guidance (or the class) fails by a wide margin; the test
asserts that gap too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from guidediff.cli import main
from guidediff.toy.distances import sliced_wasserstein

THRESHOLD = 0.3
COMMON = ["--threads", "1", "--no-plot"]


def _toy(*args: str) -> int:
    return main(["toy", *args])


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    assert _toy("--oracle", "--w=0,1,3", "--n", "1000", "--steps", "50", "--out", str(out), "--threads", "1") == 0
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    args = ["--w=0,1,3", "--n", "1000", "--steps", "50", "--train-steps", "2000", "--batch-size", "512", "--out", str(out)]
    assert _toy(*args, *COMMON) == 0
    return out


def test_oracle_run_writes_the_four_files(oracle_run):
    with np.load(oracle_run / "samples.npz") as f:
        x, y, w = f["x"], f["y"], f["w"]
    n = 1000 * 3 * 3
    assert x.shape == (n, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert y.shape == (n,) and y.dtype == np.int64 and set(y.tolist()) == {0, 1, 2}
    assert w.shape == (n,) and w.dtype == np.float32 and set(w.tolist()) == {0.0, 1.0, 3.0}
    comps = json.loads((oracle_run / "dataset.json").read_text())["components"]
    assert len(comps) == 3 and sorted(c["label"] for c in comps) == [0, 1, 2]
    for c in comps:
        assert len(c["mean"]) == 2 and np.array(c["cov"]).shape == (2, 2) and c["weight"] == pytest.approx(1 / 3)
    metrics = json.loads((oracle_run / "metrics.json").read_text())
    assert "sliced Wasserstein" in metrics["distance"]
    rows = metrics["results"]
    assert len(rows) == 9
    for r in rows:
        assert {"w", "class", "n", "model_vs_exact", "exact_vs_tilted", "tilted_vs_tilted"} <= set(r)
        assert r["model_vs_exact"] is None and r["n"] == 1000
    # the science: exact guidance at w = 3 is far from the tilted density, well above the noise floor;
    # at w = 0 it is within noise of it
    for r in rows:
        if r["w"] == 3.0:
            assert r["exact_vs_tilted"] > 4 * r["tilted_vs_tilted"]
        if r["w"] == 0.0:
            assert r["exact_vs_tilted"] < 2.5 * r["tilted_vs_tilted"]
    png = (oracle_run / "toy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_mlp_matches_the_exact_sampler(trained_run, oracle_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["samples_from"] == "trained MLP"
    assert (trained_run / "model.safetensors").exists()
    with np.load(trained_run / "samples.npz") as f:
        xm, ym, wm = (torch.from_numpy(f[k]) for k in ("x", "y", "w"))
    with np.load(oracle_run / "samples.npz") as f:
        xe, ye, we = (torch.from_numpy(f[k]) for k in ("x", "y", "w"))
    assert torch.equal(ym, ye) and torch.equal(wm, we)
    for r in metrics["results"]:
        assert r["model_vs_exact"] < THRESHOLD, r
        sel = (we == r["w"]) & (ye == r["class"])
        # metrics.json's (a) is the distance between the two sample files (same seed and sampler)
        assert sliced_wasserstein(xm[sel], xe[sel]) == pytest.approx(r["model_vs_exact"], rel=1e-4)
    for c in range(3):
        gap = sliced_wasserstein(xe[(we == 0) & (ye == c)], xe[(we == 3) & (ye == c)])
        assert gap > 2 * THRESHOLD, gap


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_classifier_guidance_equals_cfg_through_the_cli(tmp_path, sampler):
    base = ["--oracle", "--n", "200", "--steps", "20", "--sampler", sampler, "--seed", "3", *COMMON]
    assert _toy(*base, "--w=-1,0,3", "--out", str(tmp_path / "cfg")) == 0
    assert _toy(*base, "--guidance", "classifier", "--base", "uncond", "--scale", "0,1,4", "--out", str(tmp_path / "cg")) == 0
    with np.load(tmp_path / "cfg" / "samples.npz") as a, np.load(tmp_path / "cg" / "samples.npz") as b:
        np.testing.assert_allclose(b["x"], a["x"], rtol=0, atol=1e-4)
        np.testing.assert_array_equal(b["y"], a["y"])
        np.testing.assert_array_equal(b["w"], a["w"] + 1)  # the file holds the scale s = w + 1
    metrics = json.loads((tmp_path / "cg" / "metrics.json").read_text())
    assert [r["tilt_w"] for r in metrics["results"][::3]] == [-1.0, 0.0, 3.0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--oracle", "--classes", "7"], "class 7"),
        (["--oracle", "--w", "nan"], "finite"),
        (["--oracle", "--w=0,abc"], "numbers"),
        (["--oracle", "--lam-min", "5", "--lam-max", "1"], "lam_min"),
        (["--oracle", "--steps", "0"], "steps"),
        (["--oracle", "--data", "moons"], "gmm3"),
        (["--oracle", "--sampler", "euler"], "sampler"),
        (["--oracle", "--grid", "karras", "--sigma-max", "1e6"], "sigma_max must lie in"),
        (["--guidance", "classifier", "--classifier-steps", "0"], "classifier_steps"),
        (["--oracle", "--scale", "2"], "--guidance classifier"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, words):
    # the arguments under test come last, so they override these defaults
    assert _toy("--n", "10", "--steps", "5", "--out", str(tmp_path / "o"), *COMMON, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and words in err, err


def test_unwritable_out_names_the_directory(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    target = blocker / "sub"
    assert _toy("--oracle", "--n", "10", "--steps", "5", "--out", str(target), *COMMON) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and str(target) in err, err


def test_saved_model_reproduces_the_samples(trained_run):
    """model.safetensors (weights + config in its metadata) alone regenerates samples.npz."""
    from guidediff.toy.run import guided, load_toy_model, sample_toy

    model = load_toy_model(trained_run / "model.safetensors")
    x, y, w = sample_toy(
        lambda weights: guided(model, weights, null_class=3),
        classes=(0, 1, 2), weights=(0.0, 1.0, 3.0), n=1000, steps=50, seed=0,
    )
    with np.load(trained_run / "samples.npz") as f:
        np.testing.assert_allclose(x.numpy(), f["x"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), f["y"])


def test_sigma_max_reaches_the_toy_sampler(tmp_path):
    args = ["--oracle", "--w=1", "--n", "50", "--steps", "5", "--grid", "karras", *COMMON]
    assert _toy(*args, "--out", str(tmp_path / "full")) == 0
    assert _toy(*args, "--sigma-max", "80", "--out", str(tmp_path / "cut")) == 0
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["config"]["sigma_max"] == 80.0
    full, cut = (np.load(tmp_path / d / "samples.npz")["x"] for d in ("full", "cut"))
    assert not np.allclose(full, cut)
