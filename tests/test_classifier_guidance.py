"""Classifier guidance: the ancestral mean form against the score form, gradients under no_grad
without leaks, finite differences, the noisy classifier's training/loading and the label-set check."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from guidediff import guidance as G
from guidediff import samplers, schedules
from guidediff.classifier_guidance import check_label_set, classifier_grad_log_prob, load_noisy_classifier
from guidediff.data.toy2d import load_toy
from guidediff.errors import UsageError
from guidediff.classifier_guidance.network import NoisyClassifier
from guidediff.nets.unet import UNetConfig

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_arrays, tiny_config  # noqa: E402


def tiny_classifier(num_classes: int = 3, dtype=torch.float32, seed: int = 0) -> NoisyClassifier:
    """A small NoisyClassifier with every weight random (ADM zero-inits branches: the gradient
    of a fresh net would be trivially small)."""
    torch.manual_seed(seed)
    cfg = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), head_channels=8, num_classes=num_classes)
    net = NoisyClassifier(cfg).to(dtype).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.requires_grad_(False)


# ------------------------------------------------------------------ mean form vs score form
def test_mean_form_matches_score_form_to_first_order():
    """Same seed, exact GMM scores and Bayes classifier, ancestral sampler: the mean shift
    s·Σ·∇log p(c|z_t) and the score form −s·σ·∇ differ by O(step): the gap halves with the step."""
    mixture = load_toy("gmm3")
    schedule = schedules.make_schedule("cfg")
    n, scale = 300, 2.0
    c = torch.arange(mixture.num_classes).repeat(n // mixture.num_classes)
    uncond = G.unconditional(mixture, mixture.null_class)
    score_form = G.classifier_guidance(uncond, mixture.grad_log_prob, scale)
    mean_form = G.classifier_mean_shift(mixture.grad_log_prob, scale)
    steps, gaps = [16, 32, 64, 128], []
    for k in steps:
        lams = schedules.lam_grid(schedule, k, dtype=torch.float64)
        z = torch.randn(len(c), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            a = samplers.sample_ancestral(score_form, z, lams, c, generator=torch.Generator().manual_seed(1))
            b = samplers.sample_ancestral(uncond, z, lams, c, generator=torch.Generator().manual_seed(1),
                                          mean_shift=mean_form)
        gaps.append(float((a - b).norm(dim=1).mean()))
    slope = np.polyfit(np.log(steps), np.log(gaps), 1)[0]
    assert -slope >= 0.7, (gaps, slope)
    assert gaps[0] > 1e-3  # the forms do differ: the test is not comparing a sampler with itself


def test_zero_mean_shift_is_the_plain_sampler():
    mixture = load_toy("gmm3")
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), 8, dtype=torch.float64)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = samplers.sample_ancestral(mixture, z, lams, c, generator=torch.Generator().manual_seed(1))
    shifted = samplers.sample_ancestral(mixture, z, lams, c, generator=torch.Generator().manual_seed(1),
                                        mean_shift=G.classifier_mean_shift(mixture.grad_log_prob, 0.0))
    torch.testing.assert_close(plain, shifted, rtol=0, atol=0)
    moved = samplers.sample_ancestral(mixture, z, lams, c, generator=torch.Generator().manual_seed(1),
                                      mean_shift=G.classifier_mean_shift(mixture.grad_log_prob, 3.0))
    assert (moved - plain).abs().max() > 1e-2


# ------------------------------------------------------------------ gradients
def test_classifier_gradient_matches_finite_differences():
    net = tiny_classifier(dtype=torch.float64)
    z = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lam = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    c = torch.tensor([0, 2])
    with torch.no_grad():
        g = G.classifier_gradient(net.log_prob)(z, lam, c)
        g2 = classifier_grad_log_prob(net)(z, lam, c)
        torch.testing.assert_close(g, g2)
        h = 1e-6
        for idx in [(0, 0, 1, 2), (0, 0, 5, 5), (1, 0, 3, 7), (1, 0, 0, 0)]:
            e = torch.zeros_like(z)
            e[idx] = h
            fd = (net.log_prob(z + e, lam, c) - net.log_prob(z - e, lam, c))[idx[0]] / (2 * h)
            assert abs(float(fd) - float(g[idx])) < 1e-6 * max(1.0, abs(float(fd))), (idx, float(fd), float(g[idx]))
    assert float(g.abs().max()) > 1e-4


@pytest.mark.parametrize("form", ["score", "mean"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_guided_sampling_keeps_no_graph(form, mode):
    """100 guided steps inside no_grad / inference_mode: every tensor autograd saved is released
    (counted through saved-tensor hooks), and the result carries no graph."""
    net = tiny_classifier()
    grad = classifier_grad_log_prob(net)
    alive: weakref.WeakSet = weakref.WeakSet()
    packed = [0]

    class Holder:
        def __init__(self, t):
            self.t = t

    def pack(t):
        h = Holder(t)
        alive.add(h)
        packed[0] += 1
        return h

    def denoiser(z, lam, c):  # a stand-in ε-model; the classifier is what needs autograd here
        return 0.5 * z

    lams = schedules.lam_grid(schedules.make_schedule("cfg"), 100)
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 1, 2])
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        if form == "score":
            out = samplers.sample_ancestral(G.classifier_guidance(denoiser, grad, 2.0), z, lams, c, clip_x=1.0,
                                            generator=torch.Generator().manual_seed(1))
        else:
            out = samplers.sample_ancestral(denoiser, z, lams, c, clip_x=1.0, generator=torch.Generator().manual_seed(1),
                                            mean_shift=G.classifier_mean_shift(grad, 2.0))
    gc.collect()
    assert packed[0] > 100  # autograd did record the classifier (the hooks see something)
    assert len(alive) == 0
    assert out.grad_fn is None and not out.requires_grad
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ label set, loading, training
def test_label_set_mismatch_is_a_usage_error():
    check_label_set(10, 10)
    with pytest.raises(UsageError, match="predicts 3 classes but the diffusion model has 10"):
        check_label_set(3, 10, "clf.safetensors")


def test_train_load_and_guide(tmp_path):
    from guidediff.classifier_guidance.training import train_noisy_classifier

    config = tiny_config("train.steps=30", "train.sample_every=15", "train.checkpoint_every=15",
                         "train.warmup_steps=1", "train.batch_size=16", "train.lr=3e-3")
    result, acc = train_noisy_classifier(config, tmp_path / "run", tiny_arrays(16, 3, 8), tiny_arrays(8, 3, 8, seed=1),
                                         progress=False, log=lambda _m: None)
    assert result.step == 30
    assert (tmp_path / "run" / "accuracy_vs_lam.png").is_file()
    assert (tmp_path / "run" / "samples" / "accuracy_vs_lam_step0000015.json").is_file()
    assert len(acc["accuracy"]) == len(acc["lam_centers"]) == 12 and acc["chance"] == pytest.approx(1 / 3)
    # clean images are easy (class c is brighter), pure noise is chance
    assert acc["accuracy"][-1] >= 0.6 and min(acc["accuracy"][:2]) <= 0.5
    for source in (tmp_path / "run", tmp_path / "run" / "model.safetensors"):
        clf, cfg = load_noisy_classifier(source)
        assert clf.num_classes == 3 and cfg.model.num_classes == 3
    g = classifier_grad_log_prob(clf)(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 1]))
    assert g.shape == (2, 1, 8, 8) and torch.isfinite(g).all()
    from guidediff.classifier_guidance import guide_accuracy

    held = tiny_arrays(8, 3, 8, seed=2)
    right = guide_accuracy(clf, held.images, held.labels, 20.0)
    wrong = guide_accuracy(clf, held.images, (held.labels + 1) % 3, 20.0)
    assert right["accuracy"] >= 0.6 and right["accuracy"] + wrong["accuracy"] <= 1.0
    assert 0 < wrong["mean_prob"] < right["mean_prob"] < 1


def test_loading_a_diffusion_model_as_classifier_is_a_usage_error(tmp_path):
    from guidediff.train import train

    config = tiny_config("train.steps=2", "train.checkpoint_every=2")
    train(config, tmp_path / "dm", dataset=tiny_arrays(), progress=False, log=lambda _m: None,
          sample_fn=lambda *a: None)
    with pytest.raises(UsageError, match="not a noisy classifier"):
        load_noisy_classifier(tmp_path / "dm")
    with pytest.raises(UsageError, match="does not exist"):
        load_noisy_classifier(tmp_path / "nothing")


# ------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny diffusion model (3 classes), a noisy classifier on the same data, one on 4 classes."""
    from guidediff.classifier_guidance.training import train_noisy_classifier
    from guidediff.train import train

    root = tmp_path_factory.mktemp("cg")
    train(tiny_config("train.steps=2", "train.sample_every=100"), root / "dm", dataset=tiny_arrays(), progress=False,
          log=lambda _m: None)
    for name, k in (("clf", 3), ("clf4", 4)):
        config = tiny_config("train.steps=4", "train.sample_every=100", "train.batch_size=8")
        train_noisy_classifier(config, root / name, tiny_arrays(4, k, 8), tiny_arrays(2, k, 8, seed=1),
                               eval_images=6, progress=False, log=lambda _m: None)
    return root


def cg_sample(runs, out, *extra):
    from guidediff.cli import main

    return main(["sample", str(runs / "dm"), "--classes", "0-2", "--n", "2", "--steps", "3", "--out", str(out),
                 "--device", "cpu", "--guidance", "classifier", "--classifier", str(runs / "clf"), *extra])


def test_cli_sample_classifier_guidance(runs, tmp_path, capsys):
    assert cg_sample(runs, tmp_path / "a", "--scale", "0,4") == 0
    printed = capsys.readouterr().out
    with np.load(tmp_path / "a" / "samples.npz") as f:
        x, y, w = f["x"], f["y"], f["w"]
    assert x.shape == (12, 8, 8, 1) and w.tolist() == [0.0] * 6 + [4.0] * 6 and y.tolist() == [0, 0, 1, 1, 2, 2] * 2
    # uncond base: one forward per step whatever the scale; one classifier gradient per step
    assert "NFE per image: 3.0" in printed and "classifier gradients per image: 3.0" in printed
    assert cg_sample(runs, tmp_path / "b", "--scale", "4", "--base", "cond", "--sampler", "ancestral",
                     "--cg-form", "mean") == 0


@pytest.mark.parametrize("extra, message", [
    (["--scale", "2", "--cg-form", "mean"], "sampler='ancestral'"),
    (["--scale", "2", "--w", "1"], "give the scales as --scale"),
    ([], "needs --scale"),
])
def test_cli_sample_classifier_errors(runs, tmp_path, capsys, extra, message):
    assert cg_sample(runs, tmp_path / "e", *extra) == 2
    assert message in capsys.readouterr().err


def test_cli_label_set_mismatch(runs, tmp_path, capsys):
    from guidediff.cli import main

    code = main(["sample", str(runs / "dm"), "--n", "1", "--steps", "2", "--out", str(tmp_path / "m"), "--device",
                 "cpu", "--guidance", "classifier", "--classifier", str(runs / "clf4"), "--scale", "1"])
    assert code == 2 and "predicts 4 classes but the diffusion model has 3" in capsys.readouterr().err


def test_cli_sweep_checks_its_knob(runs, tmp_path, capsys):
    from guidediff.cli import main

    code = main(["sweep", str(runs / "dm"), "--out", str(tmp_path / "s"), "--guidance", "classifier", "--scale", "1"])
    assert code == 2 and "needs --noisy-classifier" in capsys.readouterr().err
    code = main(["sweep", str(runs / "dm"), "--out", str(tmp_path / "s"), "--scale", "1"])
    assert code == 2 and "is for --guidance classifier" in capsys.readouterr().err


# ------------------------------------------------------------------ 2-D toy without the oracle
def test_toy_trained_classifier_guidance(tmp_path):
    from guidediff.toy.run import run_toy, train_toy_classifier

    mixture = load_toy("gmm3")
    clf = train_toy_classifier(mixture, steps=150, batch_size=256, log=None)
    x, y = mixture.sample(600, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = (clf(x.float(), torch.full((600,), 8.0)).argmax(1) == y).float().mean()
        bayes = (torch.stack([mixture.log_class_prob(x, torch.full((600,), 8.0, dtype=torch.float64),
                                                     torch.full((600,), k)) for k in range(3)], 1).argmax(1) == y)
    assert float(clean) >= float(bayes.double().mean()) - 0.1  # near the Bayes accuracy on nearly clean data
    # the net reads α·z, so its gradient carries α_λ ≈ 4.5e-5 at λ = −20, as the exact one does
    g = G.classifier_gradient(clf.log_prob)(torch.randn(50, 2), torch.full((50,), -20.0), torch.zeros(50, dtype=torch.long))
    assert float(g.abs().max()) < 1e-3
    result = run_toy(data="gmm3", guidance="classifier", w=(3.0,), n=60, steps=20, train_steps=60,
                     classifier_steps=60, batch_size=256, out=str(tmp_path / "toy"), plot=False, log=None)
    assert result.metrics["samples_from"] == "trained MLP + trained noisy classifier"
    assert "train_classifier_s" in result.timings
    assert all(np.isfinite(r["model_vs_exact"]) and r["model_vs_exact"] < 5 for r in result.metrics["results"])


def test_sweep_classifier_guidance_points(runs, tmp_path, monkeypatch):
    """run_sweep with CG: points carry the scale and the guiding classifier's own accuracy
    (the evaluation is stubbed: its metrics have their own tests)."""
    import json

    import guidediff.metrics.evaluate as evaluate
    import guidediff.nets.fmnist_classifier as fmnist_classifier
    from guidediff.sweep import run_sweep

    fake = {"fid": 1.0, "fid_floor": 0.5, "n": 6, "is": 2.0, "cas": 0.5, "precision": 0.5, "recall": 0.5}
    monkeypatch.setattr(evaluate, "evaluate_samples", lambda *a, **k: dict(fake))
    monkeypatch.setattr(fmnist_classifier, "load_eval_classifier", lambda *a, **k: None)
    summary = run_sweep(str(runs / "dm"), [0.0, 3.0], n=30, steps=2, out_dir=tmp_path / "sw", device="cpu",
                        batch_size=64, bf16=False, guidance="classifier", noisy_classifier=str(runs / "clf"))
    points = json.loads((tmp_path / "sw" / "sweep.json").read_text())["points"]
    assert [p["scale"] for p in points] == [0.0, 3.0] and "w" not in points[0]
    assert summary["knob"] == "scale" and all(0 <= p["guide_accuracy"]["accuracy"] <= 1 for p in points)
    assert points[0]["classifier_evals_per_image"] == 2.0
    assert (tmp_path / "sw" / "metrics_vs_w.png").is_file()


def test_cli_train_noisy_classifier(tmp_path, capsys):
    from guidediff.cli import main
    from train_helpers import TINY, tiny_folder

    folder = tiny_folder(tmp_path / "imgs")
    code = main(["train-noisy-classifier", "--config", str(TINY), "--set", f"data.name=\"{folder}\"",
                 "--set", "data.resolution=8", "--set", "data.channels=1", "--max-steps", "3",
                 "--out", str(tmp_path / "nc"), "--eval-images", "9", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "measured on training images" in out and "accuracy vs lambda" in out
    clf, config = load_noisy_classifier(tmp_path / "nc" / "model.safetensors")
    assert clf.num_classes == 3 and config.model.image_size == 8
    assert main(["train-noisy-classifier", "--out", str(tmp_path / "nc"), "--resume", "--max-steps", "4",
                 "--no-progress"]) == 0
