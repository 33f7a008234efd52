"""`guidediff sample` and generation.generate on a tiny trained checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidediff.loading import load_model
from guidediff.nets.w_conditioned import WConditionedUNet
from guidediff.cli import main
from guidediff.generation import generate, initial_noise
from guidediff.train import train
from train_helpers import tiny_arrays, tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(tiny_config("train.steps=2", "train.sample_every=100"), path, dataset=tiny_arrays(), progress=False,
          log=lambda _m: None)
    return path


def sample(run_dir, out, *extra):
    return main(["sample", str(run_dir), "--classes", "0-2", "--w", "0,2", "--n", "2", "--steps", "3",
                 "--out", str(out), "--device", "cpu", *extra])


def test_npz_contract_and_grids(run_dir, tmp_path, capsys):
    assert sample(run_dir, tmp_path / "s") == 0
    printed = capsys.readouterr().out
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert sorted(f.files) == ["w", "x", "y"]
        x, y, w = f["x"], f["y"], f["w"]
    assert x.dtype == np.uint8 and x.shape == (12, 8, 8, 1)
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert w.dtype == np.float32 and w.tolist() == [0.0] * 6 + [2.0] * 6
    assert (tmp_path / "s" / "grid_w0.png").is_file() and (tmp_path / "s" / "grid_w2.png").is_file()
    # w = 0 costs one forward per step, w = 2 two (cond + uncond): (3·1 + 3·2)/2 = 4.5 per image
    assert "NFE per image: 4.5" in printed and "ms per image" in printed


def test_same_seed_same_samples_any_batch_size(run_dir, tmp_path):
    assert sample(run_dir, tmp_path / "a", "--seed", "3") == 0
    assert sample(run_dir, tmp_path / "b", "--seed", "3", "--batch-size", "5") == 0
    assert sample(run_dir, tmp_path / "c", "--seed", "4") == 0
    a, b, c = (np.load(tmp_path / d / "samples.npz")["x"] for d in "abc")
    # DDIM is deterministic and the start noise is per (class, index): batching changes at most
    # the last bit of a float, so at most one grey level
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not np.array_equal(a, c)
    assert sample(run_dir, tmp_path / "d", "--seed", "3") == 0
    assert np.array_equal(a, np.load(tmp_path / "d" / "samples.npz")["x"])


def test_nfe_and_initial_noise(run_dir):
    net, config = load_model(run_dir)
    one = generate(net, config, [1], [0.0], 2, steps=4, seed=0, device="cpu", progress=False)
    two = generate(net, config, [1], [-1.0, 3.0], 2, steps=4, seed=0, device="cpu", progress=False)
    assert one["nfe_per_image"] == 4 and two["nfe_per_image"] == 6  # w=-1: uncond only; w=3: both
    # the start noise of (class, index) does not depend on what else is asked
    z = initial_noise(0, [(1, 0), (1, 1), (2, 0)], (1, 8, 8))
    assert torch.equal(z[2], initial_noise(0, [(2, 0)], (1, 8, 8))[0])
    assert not torch.equal(z[0], z[1])


def test_ancestral_runs_and_repeats(run_dir, tmp_path):
    for d in "ab":
        assert sample(run_dir, tmp_path / d, "--sampler", "ancestral") == 0
    assert np.array_equal(np.load(tmp_path / "a" / "samples.npz")["x"], np.load(tmp_path / "b" / "samples.npz")["x"])


@pytest.mark.parametrize("args, message", [
    (["--classes", "5"], "class 5 is out of range: the model has 3 classes (0-2)"),
    (["--w", "nan"], "not finite"),
    (["--n", "0"], "--n must be a positive integer"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--grid", "karras", "--sigma-max", "1e6"], "--sigma-max must lie in (4.54e-05, 22026.5]"),
])
def test_bad_input_is_one_line_exit_2(run_dir, tmp_path, capsys, args, message):
    code = main(["sample", str(run_dir), "--out", str(tmp_path), "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_sigma_max_starts_the_grid_lower(run_dir, tmp_path, capsys):
    assert sample(run_dir, tmp_path / "full", "--grid", "karras") == 0
    assert sample(run_dir, tmp_path / "cut", "--grid", "karras", "--sigma-max", "80") == 0
    assert "(karras grid from sigma/alpha 80)" in capsys.readouterr().out
    full, cut = (np.load(tmp_path / d / "samples.npz")["x"] for d in ("full", "cut"))
    assert full.shape == cut.shape and not np.array_equal(full, cut)


def test_truncated_model_file_is_one_line_exit_2(run_dir, tmp_path, capsys):
    data = (run_dir / "model.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["sample", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is truncated" in err and err.count("\n") == 1


def test_cfg_variants_from_the_command_line(run_dir, tmp_path, capsys):
    assert sample(run_dir, tmp_path / "plain") == 0
    # an interval that holds every λ of the grid is plain CFG
    assert sample(run_dir, tmp_path / "all", "--cfg-variant", "interval", "--interval=-30,30") == 0
    plain, everywhere = (np.load(tmp_path / d / "samples.npz")["x"].astype(int) for d in ("plain", "all"))
    assert np.abs(plain - everywhere).max() <= 1
    for extra in (["--cfg-variant", "rescale", "--phi", "0.5"],
                  ["--cfg-variant", "apg", "--apg-momentum=-0.5", "--apg-threshold", "1"]):
        assert sample(run_dir, tmp_path / extra[1], *extra) == 0
    capsys.readouterr()
    assert sample(run_dir, tmp_path / "bad", "--cfg-variant", "interval", "--interval", "5,1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --interval") and "\n" not in err


def test_guidance_interval_saves_network_evaluations(run_dir):
    net, config = load_model(run_dir)
    full = generate(net, config, [1], [2.0], 2, steps=4, seed=0, device="cpu", progress=False)
    # the 4-step grid of the CFG schedule visits λ = −20, −4.0, 0, 4.0: an interval [−1, 1] guides one step
    part = generate(net, config, [1], [2.0], 2, steps=4, seed=0, device="cpu", progress=False,
                    cfg_variant={"name": "interval", "lam_lo": -1.0, "lam_hi": 1.0})
    assert full["nfe_per_image"] == 8 and part["nfe_per_image"] == 5


def test_autoguidance_with_the_model_as_its_own_guide_is_unguided(run_dir, tmp_path, capsys):
    # ε̃ = ε + w·(ε − ε_guide) with ε_guide = ε leaves ε: the samples of w = 0, at twice the NFE
    net, config = load_model(run_dir)
    unguided = generate(net, config, [0, 2], [0.0], 2, steps=3, seed=0, device="cpu", progress=False)
    auto = generate(net, config, [0, 2], [3.0], 2, steps=3, seed=0, device="cpu", progress=False,
                    cfg_variant={"name": "autoguidance"}, guide_net=load_model(run_dir)[0])
    assert np.abs(unguided["x"].astype(int) - auto["x"].astype(int)).max() <= 1
    assert unguided["nfe_per_image"] == 3 and auto["nfe_per_image"] == 6
    assert sample(run_dir, tmp_path / "auto", "--cfg-variant", "autoguidance", "--guide-model", str(run_dir)) == 0
    capsys.readouterr()
    for extra, message in ((["--cfg-variant", "autoguidance"], "needs --guide-model"),
                           (["--guide-model", str(run_dir)], "only by --cfg-variant autoguidance")):
        assert sample(run_dir, tmp_path / "bad", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_sweep_with_a_cfg_variant_records_it(run_dir, tmp_path, monkeypatch):
    """run_sweep of a variant: the variant and its cost are in sweep.json (evaluation stubbed: the
    metrics have their own tests, and the tiny model's images are not Fashion-MNIST)."""
    import json

    import guidediff.metrics.evaluate as evaluate
    import guidediff.nets.fmnist_classifier as fmnist_classifier

    fake = {"fid": 1.0, "fid_floor": 0.5, "n": 6, "is": 2.0, "cas": 0.5, "precision": 0.5, "recall": 0.5}
    monkeypatch.setattr(evaluate, "evaluate_samples", lambda *a, **k: dict(fake))
    monkeypatch.setattr(fmnist_classifier, "load_eval_classifier", lambda *a, **k: None)
    assert main(["sweep", str(run_dir), "--w", "0,2", "--n", "12", "--steps", "4", "--device", "cpu",
                 "--cfg-variant", "interval", "--interval=-1,1", "--out", str(tmp_path / "sw")]) == 0
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert summary["cfg_variant"] == {"name": "interval", "lam_lo": -1.0, "lam_hi": 1.0}
    # 4 steps, one inside [−1, 1]: it costs 2 forwards when guided (w = 2), 1 at w = 0
    assert [p["nfe_per_image"] for p in summary["points"]] == [4.0, 5.0]


def test_compiled_sampling_matches_eager_and_keeps_honest_counts(run_dir, monkeypatch):
    # the aot_eager backend traces like inductor but needs no C compiler (and is quick) on CI's CPU
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend="aot_eager", **kw))
    net, config = load_model(run_dir)
    eager = generate(net, config, [0, 1], [0.0, 2.0], 3, steps=3, seed=0, device="cpu", progress=False, batch_size=4)
    compiled = generate(net, config, [0, 1], [0.0, 2.0], 3, steps=3, seed=0, device="cpu", progress=False,
                        batch_size=4, compile=True)
    assert np.abs(eager["x"].astype(int) - compiled["x"].astype(int)).max() <= 1
    # the warm-up batches that compile each shape are not counted
    assert compiled["nfe_per_image"] == eager["nfe_per_image"] == 4.5


def _distill(teacher, tmp_path, monkeypatch):
    """`guidediff distill` for a few CPU steps on the tiny arrays; returns (file, student, config)."""
    import guidediff.data.images as images

    # the tiny run trained on in-memory arrays: serve the same arrays as its dataset
    monkeypatch.setattr(images, "load_dataset", lambda *a, **k: tiny_arrays())
    assert main(["distill", str(teacher), "--steps", "3", "--batch-size", "8", "--device", "cpu",
                 "--out", str(tmp_path / "student")]) == 0
    student_file = tmp_path / "student" / "model.safetensors"
    student, config = load_model(student_file)
    assert isinstance(student, WConditionedUNet)
    return student_file, student, config


def test_distill_command_writes_a_student_that_samples_at_one_forward_per_step(run_dir, tmp_path, capsys, monkeypatch):
    student_file, student, config = _distill(run_dir, tmp_path, monkeypatch)
    result = generate(student, config, [0, 1], [0.0, 2.0], 2, steps=3, seed=0, device="cpu", progress=False)
    assert result["nfe_per_image"] == 3 and result["x"].shape == (8, 8, 8, 1)
    capsys.readouterr()
    assert sample(student_file, tmp_path / "s") == 0 and "NFE per image: 3.0" in capsys.readouterr().out
    assert sample(student_file, tmp_path / "bad", "--cfg-variant", "rescale") == 2
    err = capsys.readouterr().err.strip()
    assert "distilled student" in err and "\n" not in err


def test_distill_an_edm_preconditioned_teacher(tmp_path, capsys, monkeypatch):
    """The student of a teacher trained with diffusion.precondition = edm is saved with the same
    preconditioning and sampled through it exactly once: before training it samples the teacher's
    conditional model (w = 0) at every w."""
    teacher_dir = tmp_path / "edm"
    train(tiny_config("train.steps=2", "train.sample_every=100", 'diffusion.precondition="edm"',
                      "diffusion.sigma_data=0.6"), teacher_dir, dataset=tiny_arrays(), progress=False,
          log=lambda _m: None)
    teacher, config = load_model(teacher_dir)
    kw = dict(steps=3, seed=0, device="cpu", progress=False, bf16=False)
    want = generate(teacher, config, [0, 1], [0.0], 2, **kw)["x"]
    fresh = generate(WConditionedUNet.from_teacher(teacher), config, [0, 1], [0.0, 2.5], 2, **kw)["x"]
    assert np.abs(fresh.astype(int) - np.concatenate([want, want]).astype(int)).max() <= 1

    student_file, _, student_config = _distill(teacher_dir, tmp_path, monkeypatch)
    assert (student_config.diffusion.precondition, student_config.diffusion.sigma_data) == ("edm", 0.6)
    capsys.readouterr()
    assert sample(student_file, tmp_path / "s") == 0 and "NFE per image: 3.0" in capsys.readouterr().out
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert f["x"].shape == (12, 8, 8, 1) and f["w"].tolist() == [0.0] * 6 + [2.0] * 6


def test_the_model_config_can_choose_the_guidance_method(tmp_path, capsys):
    path = tmp_path / "run"
    train(tiny_config("train.steps=2", "train.sample_every=100", 'sample.cfg_variant="rescale"', "sample.phi=0.5"),
          path, dataset=tiny_arrays(), progress=False, log=lambda _m: None)
    capsys.readouterr()
    assert sample(path, tmp_path / "from_config") == 0
    assert "guidance: phi 0.5 (rescale)" in capsys.readouterr().out
    # a variant named on the command line takes none of the config's options
    assert sample(path, tmp_path / "explicit", "--cfg-variant", "apg") == 0
    assert "guidance: eta 0.0, momentum 0.0, norm_threshold None (apg)" in capsys.readouterr().out
    assert sample(path, tmp_path / "plain", "--cfg-variant", "plain") == 0
    assert "guidance:" not in capsys.readouterr().out
    # [sample.guidance_options] beats the fixed field; --guidance-opt beats the table; --phi beats both
    table = tmp_path / "table"
    train(tiny_config("train.steps=2", "train.sample_every=100", 'sample.cfg_variant="rescale"', "sample.phi=0.5",
                      "sample.guidance_options={phi=0.25}"), table, dataset=tiny_arrays(), progress=False,
          log=lambda _m: None)
    capsys.readouterr()
    for extra, phi in (((), 0.25), (("--guidance-opt", "phi=0.125"), 0.125),
                       (("--guidance-opt", "phi=0.125", "--phi", "1"), 1.0)):
        assert sample(table, tmp_path / f"table{phi}", *extra) == 0
        assert f"guidance: phi {phi} (rescale)" in capsys.readouterr().out
    with pytest.raises(Exception, match="sample.cfg_variant 'bogus' is unknown"):
        tiny_config('sample.cfg_variant="bogus"').validate()


def test_sweep_refuses_compile_on_the_cpu_and_a_student_as_guide(run_dir, tmp_path, capsys, monkeypatch):
    assert main(["sweep", str(run_dir), "--w", "1", "--n", "12", "--device", "cpu", "--compile",
                 "--out", str(tmp_path / "sw")]) == 2
    assert "--compile is for sampling on a GPU" in capsys.readouterr().err
    net, config = load_model(run_dir)
    from guidediff.errors import UsageError

    with pytest.raises(UsageError, match="guide model is a distilled student"):
        generate(net, config, [0], [1.0], 1, steps=2, device="cpu", progress=False,
                 cfg_variant={"name": "autoguidance"}, guide_net=WConditionedUNet.from_teacher(net))
