"""Evaluation against a user's image folder: train-classifier --data FOLDER, then eval --ref FOLDER,
on a tiny 64x64 RGB folder the test makes (CPU, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]


def make_folder(root, per_class=12, size=64, seed=0):
    """Three classes of 64x64 RGB images: a coloured square on noise, one colour per class."""
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(COLOURS):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            img[y:y + size // 2, x:x + size // 2] = colour
            Image.fromarray(img).save(root / f"class_{c}" / f"{i}.png")


def guidediff(*args, env):
    return subprocess.run([sys.executable, "-m", "guidediff", *args], capture_output=True, text=True, env=env)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("GUIDEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    return {**os.environ, "GUIDEDIFF_CACHE_DIR": str(tmp_path / "cache")}


@pytest.mark.slow
def test_train_classifier_on_a_folder_then_eval_against_it(tmp_path, env):
    data = tmp_path / "data"
    make_folder(data)
    clf = tmp_path / "clf.safetensors"
    arch = ["--epochs", "10", "--batch-size", "8", "--device", "cpu"]
    run = guidediff("train-classifier", "--data", str(data), "--out", str(clf), *arch, env=env)
    assert run.returncode == 0, run.stderr
    assert "held_out_accuracy" in run.stdout

    # samples: real images of the folder (good) against flat grey images (bad), with their labels
    from guidediff.data.imagefolder import load_image_folder

    images, labels, _ = load_image_folder(data, 64, 3)
    good = tmp_path / "good.npz"
    np.savez(good, x=images, y=labels)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full_like(images, 128), y=labels)
    out = tmp_path / "good.json"
    run = guidediff("eval", str(good), "--ref", str(data), "--classifier", str(clf), "--device", "cpu",
                    "--json", str(out), env=env)
    assert run.returncode == 0, run.stderr
    assert "FID-FOLDER" in run.stdout
    good_r = json.loads(out.read_text())
    # in-process from here on (a subprocess costs seconds): flat grey images against the same folder
    from guidediff.errors import UsageError
    from guidediff.metrics.evaluate import evaluate_samples

    bad_r = evaluate_samples(np.full_like(images, 128), labels, classifier=clf, ref=str(data))
    assert set(good_r) >= {"fid", "fid_floor", "kid", "is", "cas", "precision", "recall"}
    assert good_r["fid_floor"] == pytest.approx(bad_r["fid_floor"])  # one floor per folder and classifier
    assert good_r["fid"] < bad_r["fid"] and good_r["recall"] > bad_r["recall"]
    assert good_r["cas"]["overall"] > bad_r["cas"]["overall"]
    # the reference statistics were computed once and then read from the cache
    assert len(list((tmp_path / "cache" / "reference").glob("*.npz"))) == 2

    with pytest.raises(UsageError, match="trained on 64x64"):
        evaluate_samples(images[:, :32, :32], labels, classifier=clf, ref=str(data))
    with pytest.raises(UsageError, match="train-classifier --data"):
        evaluate_samples(images, labels, ref=str(data))


def test_holdout_split_keeps_every_class():
    from guidediff.classifier_training import holdout_split

    labels = np.repeat([0, 1, 2], [10, 3, 2])
    train, held = holdout_split(labels, 0.1, seed=0)
    assert sorted(set(labels[held])) == [0, 1, 2] and len(np.intersect1d(train, held)) == 0
    assert len(train) + len(held) == len(labels)
