"""`guidediff eval` and evaluate_samples end to end, with a small random-init classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from guidediff.cli import main
from guidediff.metrics.evaluate import METRIC_KEYS, evaluate_samples, format_summary
from guidediff.nets.fmnist_classifier import FmnistClassifier, save_classifier

TINY = {"widths": [4, 8, 8], "feature_dim": 16}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GUIDEDIFF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    torch.manual_seed(0)
    return save_classifier(FmnistClassifier(**TINY), tmp_path_factory.mktemp("clf") / "tiny.safetensors")


@pytest.fixture(scope="module")
def fmnist():
    from guidediff.data.fmnist import load_fmnist

    return load_fmnist("test")


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_npz_writes_json_with_exactly_the_metric_keys(tmp_path, classifier_path, fmnist, capsys):
    images, labels = fmnist
    y = labels[:300].copy()
    y[::3] = -1  # unconditional samples are left out of CAS
    npz = tmp_path / "samples.npz"
    np.savez(npz, x=images[:300, :, :, None], y=y, w=np.float32(1.0))
    out_json = tmp_path / "metrics.json"
    code, out, _ = _run(["eval", npz, "--classifier", classifier_path, "--json", out_json, "--device", "cpu"],
                        capsys)
    assert code == 0
    result = json.loads(out_json.read_text())
    assert set(result) == set(METRIC_KEYS)
    assert result["n"] == 300 and result["cas"]["n"] == 200
    assert set(result["kid"]) == {"mean", "std"}
    assert result["fid"] >= 0 and result["fid_floor"] >= 0 and 1 <= result["is"] <= 10
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert "FID-FMNIST" in out and f"(floor {result['fid_floor']:.3g}, n=300)" in out


@pytest.mark.slow
def test_real_test_set_against_itself_and_floor_identity(classifier_path, fmnist):
    from guidediff.metrics.reference import reference_images
    from guidediff.nets.fmnist_classifier import load_classifier

    model = load_classifier(classifier_path)
    images, labels = fmnist
    res = evaluate_samples(images, labels, classifier=model, ref="test", device="cpu", kid_subsets=5)
    # The samples are the reference itself: zero distance, full precision and recall.
    assert res["fid"] == pytest.approx(0.0, abs=1e-8)
    assert res["precision"] == 1.0 and res["recall"] == 1.0
    with torch.no_grad():
        x = torch.from_numpy(np.array(images)).float().div(127.5).sub(1).unsqueeze(1)
        acc = (model(x).argmax(1).numpy() == labels).mean()
    assert res["cas"]["overall"] == pytest.approx(acc, abs=1e-12)

    # The floor's 10k training images evaluated against the test set give the floor itself...
    floor_images = reference_images("train10k")
    res_train = evaluate_samples(floor_images, None, classifier=model, ref="test", kid_subsets=5)
    assert res_train["fid"] == pytest.approx(res_train["fid_floor"], rel=1e-9)
    assert res_train["cas"] is None
    assert res_train["fid_floor"] > 0


def test_format_summary_carries_floor_and_n():
    res = {"n": 10000, "fid": 12.345, "fid_floor": 1.93, "kid": {"mean": 0.01, "std": 0.001}, "is": 8.1,
           "cas": None, "precision": 0.8, "recall": 0.7}
    line = format_summary(res)
    assert line.startswith("FID-FMNIST 12.3 (floor 1.93, n=10000)")
    assert "\n" not in line and "CAS" not in line


def test_eval_image_folders(tmp_path, classifier_path, fmnist, capsys):
    from PIL import Image

    images, labels = fmnist
    for i in range(20):
        folder = tmp_path / "by_class" / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:03d}.png")
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(images[i]).save(tmp_path / "flat" / f"{i:03d}.png")

    from guidediff.metrics.samples import load_samples

    x, y = load_samples(tmp_path / "by_class")
    order = np.lexsort((np.arange(20), labels[:20]))  # sorted by class folder, then file name
    np.testing.assert_array_equal(x[..., 0], images[:20][order])
    np.testing.assert_array_equal(y, labels[:20][order])
    x, y = load_samples(tmp_path / "flat")
    assert y is None and x.shape == (20, 28, 28, 1)

    out_json = tmp_path / "m.json"
    code, _, _ = _run(["eval", tmp_path / "by_class", "--classifier", classifier_path, "--json", out_json],
                      capsys)
    assert code == 0 and json.loads(out_json.read_text())["cas"]["n"] == 20
    code, out, _ = _run(["eval", tmp_path / "flat", "--classifier", classifier_path], capsys)
    assert code == 0 and "no class labels" in out


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((5, 28, 28, 1), np.uint8)}, "no 'x' array"),
    ({"x": np.zeros((5, 28, 28, 1), np.float32)}, "must be uint8"),
    ({"x": np.zeros((5, 32, 32, 3), np.uint8)}, "Inception"),
    ({"x": np.zeros((5, 2), np.float32)}, "guidediff toy"),
    ({"x": np.zeros((5, 28, 28, 1), np.uint8), "y": np.zeros(4, np.int64)}, "y must be"),
    ({"x": np.zeros((3, 28, 28, 1), np.uint8)}, "more than 3 samples"),
])
def test_eval_bad_inputs_are_one_line_errors(tmp_path, classifier_path, capsys, arrays, match):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    code, _, err = _run(["eval", npz, "--classifier", classifier_path], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err


def test_eval_missing_and_broken_files_are_one_line_errors(tmp_path, classifier_path, capsys):
    code, _, err = _run(["eval", tmp_path / "nope.npz", "--classifier", classifier_path], capsys)
    assert code == 2 and "do not exist" in err and err.count("\n") == 1
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    code, _, err = _run(["eval", broken, "--classifier", classifier_path], capsys)
    assert code == 2 and "cannot read" in err
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((8, 28, 28, 1), np.uint8))
    code, _, err = _run(["eval", good, "--classifier", tmp_path / "missing.safetensors"], capsys)
    assert code == 2 and "train-classifier" in err
    # a --json folder that cannot exist (under a file) is refused before the work; a missing one is made
    code, _, err = _run(["eval", good, "--classifier", classifier_path, "--json", broken / "dir/x.json"], capsys)
    assert code == 2 and "is a file" in err
    code, _, err = _run(["eval", good, "--classifier", classifier_path, "--inception-weights",
                         tmp_path / "missing.pth"], capsys)
    assert code == 2 and "pytorch-fid" in err


def test_train_classifier_command_wiring(monkeypatch, tmp_path, capsys):
    import guidediff.classifier_training as ct

    seen = {}

    def fake_train(out, **kwargs):
        seen.update(out=out, **kwargs)
        return {"test_accuracy": 0.9432}

    monkeypatch.setattr(ct, "train_fmnist_classifier", fake_train)
    code, out, _ = _run(["train-classifier", "--out", tmp_path / "c.safetensors", "--epochs", "3",
                         "--batch-size", "64", "--lr", "0.01", "--device", "cpu", "--seed", "5"], capsys)
    assert code == 0 and "0.9432" in out
    assert seen == {"out": str(tmp_path / "c.safetensors"), "epochs": 3, "batch_size": 64, "lr": 0.01,
                    "device": "cpu", "seed": 5, "data_dir": None}
