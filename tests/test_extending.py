"""A new sampler and a new guidance method are one file each (docs/extending.md): this file alone
registers a test-only sampler and a test-only guidance method, and both run through `guidediff
sample`, `sweep` and `toy` with no other file changed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guidediff.cli import main
from guidediff.errors import UsageError
from guidediff.guidance import GUIDANCE, register_guidance
from guidediff.options import Option
from guidediff.samplers import SAMPLERS, predict, register_sampler
from guidediff.schedules import alpha_sigma

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import make_golden  # noqa: E402

CALLS = {"sampler": 0, "guidance": 0}


# ---------------------------------------------------------------- the two one-file extensions
def sample_half_ddim(denoiser, z, lams, c, *, generator=None, progress=False, shrink=1.0):
    """DDIM with ε̂ scaled by ``shrink`` (1: exactly DDIM with eta = 0, no clipping)."""
    CALLS["sampler"] += 1
    for i in range(len(lams) - 1):
        x, eps = predict(denoiser, z, lams[i], c, None)
        alpha_s, sigma_s = alpha_sigma(lams[i + 1])
        z = alpha_s * x + sigma_s * shrink * eps
    return z


def build_conditional_only(denoiser, w, null_class, context, *, gain=1.0):
    """ε(z, c)·gain whatever w is (gain 1: CFG at w = 0)."""
    CALLS["guidance"] += 1
    return lambda z, lam, c: gain * denoiser(z, lam, c)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_sampler("test_shrunk_ddim", help="test only", options=(
        Option("shrink", float, 1.0, "factor on eps", check=lambda v: None if v > 0 else f"must be > 0, got {v}"),
    ))(sample_half_ddim)
    register_guidance("test_cond_only", help="test only", options=(Option("gain", float, 1.0, "factor on eps"),))(
        build_conditional_only)
    yield
    SAMPLERS.pop("test_shrunk_ddim")
    GUIDANCE.pop("test_cond_only")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from guidediff.checkpoint import save_model

    config = make_golden.tiny_config()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return save_model(make_golden.tiny_unet(config).state_dict(), config, path, dtype="float32")


def _sample(model_file, out, *extra):
    return main(["sample", str(model_file), "--classes", "0-2", "--w", "0", "--n", "2", "--steps", "3",
                 "--device", "cpu", "--no-bf16", "--out", str(out), *extra])


def test_sample_with_the_new_sampler_and_method(model_file, tmp_path, capsys):
    assert _sample(model_file, tmp_path / "ref", "--sampler-opt", "clip_x=none") == 0
    before = dict(CALLS)
    assert _sample(model_file, tmp_path / "new", "--sampler", "test_shrunk_ddim", "--guidance", "test_cond_only") == 0
    assert CALLS["sampler"] > before["sampler"] and CALLS["guidance"] > before["guidance"]
    ref, new = (np.load(tmp_path / d / "samples.npz")["x"] for d in ("ref", "new"))
    assert np.array_equal(ref, new)  # shrink = 1 and gain = 1: DDIM and CFG at w = 0
    assert _sample(model_file, tmp_path / "opts", "--sampler", "test_shrunk_ddim", "--sampler-opt", "shrink=0.5",
                   "--guidance", "test_cond_only", "--guidance-opt", "gain=0.5") == 0
    assert not np.array_equal(ref, np.load(tmp_path / "opts" / "samples.npz")["x"])
    capsys.readouterr()
    assert _sample(model_file, tmp_path / "bad", "--sampler", "test_shrunk_ddim", "--sampler-opt", "shrink=-1") == 2
    err = capsys.readouterr().err.strip()
    assert "shrink must be > 0" in err and "\n" not in err
    assert _sample(model_file, tmp_path / "bad2", "--guidance-opt", "gain=2") == 2
    assert "gain" in capsys.readouterr().err


def test_the_config_can_choose_the_new_method(model_file):
    from guidediff.config import load_config

    sys.path.insert(0, str(Path(__file__).parent))
    from train_helpers import TINY

    assert load_config(TINY, ['sample.cfg_variant="test_cond_only"']).sample.cfg_variant == "test_cond_only"
    # its options in the [sample.guidance_options] table, checked against what it registered
    chosen = load_config(TINY, ['sample.cfg_variant="test_cond_only"', "sample.guidance_options={gain=0.5}"])
    assert chosen.sample.guidance_options == {"gain": 0.5}
    with pytest.raises(UsageError, match="gian is not an option of guidance test_cond_only.*options are gain"):
        load_config(TINY, ['sample.cfg_variant="test_cond_only"', "sample.guidance_options={gian=0.5}"])
    with pytest.raises(UsageError, match="guidance_options.gain must be a number"):
        load_config(TINY, ['sample.cfg_variant="test_cond_only"', 'sample.guidance_options={gain="big"}'])


def test_a_model_config_chooses_the_new_method_and_its_options(model_file, tmp_path):
    from guidediff.checkpoint import read_model_file, save_model

    tensors, meta = read_model_file(model_file)
    config = make_golden.tiny_config()
    config.sample.cfg_variant, config.sample.guidance_options = "test_cond_only", {"gain": 0.5}
    chosen = save_model(tensors, config, tmp_path / "chosen.safetensors", dtype="float32")
    assert _sample(chosen, tmp_path / "from_config") == 0
    assert _sample(model_file, tmp_path / "from_flags", "--guidance", "test_cond_only", "--guidance-opt", "gain=0.5") == 0
    assert _sample(model_file, tmp_path / "plain") == 0
    from_config, from_flags, plain = (np.load(tmp_path / d / "samples.npz")["x"]
                                      for d in ("from_config", "from_flags", "plain"))
    assert np.array_equal(from_config, from_flags) and not np.array_equal(from_config, plain)


def test_sweep_with_the_new_sampler_and_method(model_file, tmp_path, monkeypatch):
    import guidediff.metrics.evaluate as evaluate
    import guidediff.nets.fmnist_classifier as fmnist_classifier

    fake = {"fid": 1.0, "fid_floor": 0.5, "n": 6, "is": 2.0, "cas": 0.5, "precision": 0.5, "recall": 0.5}
    monkeypatch.setattr(evaluate, "evaluate_samples", lambda *a, **k: dict(fake))
    monkeypatch.setattr(fmnist_classifier, "load_eval_classifier", lambda *a, **k: None)
    before = dict(CALLS)
    assert main(["sweep", str(model_file), "--w", "0,2", "--n", "12", "--steps", "2", "--device", "cpu", "--no-bf16",
                 "--sampler", "test_shrunk_ddim", "--guidance", "test_cond_only", "--guidance-opt", "gain=0.9",
                 "--out", str(tmp_path / "sw")]) == 0
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert summary["sampler"] == "test_shrunk_ddim" and summary["guidance"] == "test_cond_only"
    assert summary["gain"] == 0.9
    assert [p["nfe_per_image"] for p in summary["points"]] == [2.0, 2.0]  # one forward per step, any w
    assert CALLS["sampler"] > before["sampler"] and CALLS["guidance"] > before["guidance"]


def test_toy_with_the_new_sampler_and_method(tmp_path):
    common = ["--oracle", "--n", "50", "--steps", "5", "--w", "0", "--threads", "1", "--no-plot"]
    assert main(["toy", *common, "--out", str(tmp_path / "ref")]) == 0
    before = dict(CALLS)
    assert main(["toy", *common, "--sampler", "test_shrunk_ddim", "--guidance", "test_cond_only",
                 "--out", str(tmp_path / "new")]) == 0
    assert CALLS["sampler"] > before["sampler"] and CALLS["guidance"] > before["guidance"]
    ref, new = (np.load(tmp_path / d / "samples.npz")["x"] for d in ("ref", "new"))
    torch.testing.assert_close(torch.from_numpy(new), torch.from_numpy(ref))
