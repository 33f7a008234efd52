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


def test_train_ddgan_on_an_image_folder_and_sample_it(tmp_path, capsys, monkeypatch):
    from guidediff.cli import main

    image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)  # a relative --data: the run saves the folder's absolute path
    assert main(["train-ddgan", "--data", "images", "--resolution", "16", "--channels", "3", "--conditional",
                 "--out", "run", "--steps", "2", "--samples", "2", *TINY]) == 0
    run = tmp_path / "run"
    _, state, _ = ddgan_train.read_ddgan_checkpoint(run, parts=())
    data = state["config"]["data"]
    assert data["name"] == str(tmp_path / "images") and data["class_names"] == ["cat", "dog"]
    assert (data["resolution"], data["channels"], data["hflip"]) == (16, 3, True)
    assert state["config"]["generator"]["attention_resolutions"] == [16]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["sample", str(run), "--n", "3", "--out", "samples", "--device", "cpu"]) == 0
    with np.load(elsewhere / "samples" / "samples.npz") as saved:
        assert saved["x"].shape == (6, 16, 16, 3) and sorted(set(saved["y"].tolist())) == [0, 1]
    # its report measures the discriminator on the folder's images
    assert main(["report", str(run)]) == 0
    assert "AUC" in (run / "report.html").read_text()
    resume = ["train-ddgan", "--out", str(run), "--device", "cpu", "--no-progress", "--resume", "--samples", "2"]
    assert main([*resume, "--steps", "3"]) == 0
    # a moved folder: named on resume, and only for a run on a folder
    (tmp_path / "images").rename(tmp_path / "moved")
    assert main([*resume, "--steps", "4"]) == 2
    assert "does not exist; pass the folder with --data PATH (with --resume: its new place)" in capsys.readouterr().err
    (tmp_path / "a_file.png").write_bytes(b"")
    assert main([*resume, "--steps", "4", "--data", str(tmp_path / "a_file.png")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main([*resume, "--steps", "4", "--data", str(tmp_path / "moved")]) == 0
    assert ddgan_train.read_ddgan_checkpoint(run, parts=())[1]["config"]["data"]["name"] == str(tmp_path / "moved")
    # a conditional run's labels are its classes in order: other classes are refused
    (tmp_path / "moved" / "dog").rename(tmp_path / "moved" / "ant")
    assert main([*resume, "--steps", "5", "--data", str(tmp_path / "moved")]) == 2
    err = capsys.readouterr().err
    assert "now holds 2 classes (ant, cat), but this run was trained on 2 classes (cat, dog)" in err


def test_an_unconditional_folder_run_resumes_when_classes_are_added(tmp_path):
    from guidediff.cli import main

    images = image_folder(tmp_path / "images", classes=("only",))
    run = tmp_path / "run"
    base = ["train-ddgan", "--out", str(run), "--samples", "2", "--device", "cpu", "--no-progress"]
    assert main([*base, *TINY, "--data", str(images), "--resolution", "16", "--channels", "1", "--steps", "2"]) == 0
    image_folder(images, classes=("more",))
    assert main([*base, "--resume", "--steps", "3"]) == 0  # the networks do not depend on the classes
    assert ddgan_train.read_ddgan_checkpoint(run, parts=())[1]["config"]["data"]["class_names"] == ["more", "only"]


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
    with pytest.raises(UsageError, match="data.class_names is what a run on an image folder saves"):
        load_config(str(images), None, ["data.resolution=32", "data.channels=3", 'data.class_names=["dog", "cat"]'])


def test_the_folder_config_file_trains_on_a_folder_named_on_the_command_line(tmp_path):
    """configs/ddgan_folder32.toml with --set data.name: the file's 32x32 RGB, conditional settings."""
    from pathlib import Path

    images = image_folder(tmp_path / "images")
    path = Path(__file__).resolve().parents[1] / "configs" / "ddgan_folder32.toml"
    config = load_config(None, path, [f'data.name="{images}"'])
    assert (config.image_size, config.data.channels, config.data.conditional) == (32, 3, True)
    assert config.generator.attention_resolutions == [16] and config.discriminator.channel_mult == [2, 4, 8, 8]
    with pytest.raises(UsageError, match="neither one of fmnist, stacked-fmnist, grid25 nor an image folder"):
        load_config(None, path, ['data.resolution=0'])  # the placeholder path is not a folder
