"""DDGAN on your own images: a folder with one sub-folder per class, at the resolution and
channels you give, through `guidediff train-ddgan` and `guidediff sample` (tiny networks, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from guidediff.ddgan import train as ddgan_train
from guidediff.ddgan.config import load_config
from guidediff.errors import UsageError

TINY = ["--set", "generator.base_channels=16", "--set", "generator.channel_mult=[1, 2]", "--set",
        "generator.num_res_blocks=1", "--set", "generator.nz=8", "--set", "discriminator.base_channels=8",
        "--set", "discriminator.channel_mult=[1, 2]", "--set", "train.batch_size=4", "--no-progress",
        "--device", "cpu"]


def image_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 24)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_train_ddgan_on_an_image_folder_and_sample_it(tmp_path, capsys):
    from guidediff.cli import main

    images = image_folder(tmp_path / "images")
    run = tmp_path / "run"
    assert main(["train-ddgan", "--data", str(images), "--resolution", "16", "--channels", "3", "--conditional",
                 "--out", str(run), "--steps", "2", "--samples", "2", *TINY]) == 0
    _, state, _ = ddgan_train.read_ddgan_checkpoint(run, parts=())
    data = state["config"]["data"]
    assert (data["name"], data["num_classes"], data["resolution"], data["channels"]) == (str(images), 2, 16, 3)
    assert data["hflip"] is True and state["config"]["generator"]["attention_resolutions"] == [16]
    assert main(["sample", str(run), "--n", "3", "--out", str(tmp_path / "samples"), "--device", "cpu"]) == 0
    with np.load(tmp_path / "samples" / "samples.npz") as saved:
        assert saved["x"].shape == (6, 16, 16, 3) and sorted(set(saved["y"].tolist())) == [0, 1]
    # its report measures the discriminator on the folder's images
    assert main(["report", str(run)]) == 0
    assert "AUC" in (run / "report.html").read_text()
    # the run resumes from anywhere (its folder is saved as an absolute path) ...
    assert main(["train-ddgan", "--out", str(run), "--steps", "3", "--device", "cpu", "--no-progress", "--resume",
                 "--samples", "2"]) == 0
    # ... but not on a folder whose classes changed
    image_folder(images, classes=("owl",))
    assert main(["train-ddgan", "--out", str(run), "--steps", "4", "--device", "cpu", "--no-progress", "--resume",
                 "--samples", "2"]) == 2
    assert "now holds 3 classes, but this run was trained on 2" in capsys.readouterr().err


def test_an_image_folder_needs_its_size_and_a_discriminator_that_fits(tmp_path):
    images = image_folder(tmp_path / "images")
    with pytest.raises(UsageError, match="read as an image folder, which needs data.resolution"):
        load_config(str(images))
    with pytest.raises(UsageError, match="neither one of fmnist, stacked-fmnist, grid25 nor an image folder"):
        load_config("fmnsit")
    with pytest.raises(UsageError, match="4 blocks; each halves the 8×8 input, so at most 3 fit"):
        load_config(str(images), None, ["data.resolution=8", "data.channels=3", "generator.channel_mult=[1]"])
    config = load_config(str(images), None, ["data.resolution=64", "data.channels=1", "data.hflip=false",
                                             "generator.attention_resolutions=[32]"])
    assert (config.image_size, config.data.hflip, config.generator.attention_resolutions) == (64, False, [32])
    assert load_config(str(images), None, ["data.resolution=32", "data.channels=3"]).generator.attention_resolutions == [16]
    with pytest.raises(UsageError, match="are for image folders; fmnist has its own shape"):
        load_config("fmnist", None, ["data.resolution=32"])
