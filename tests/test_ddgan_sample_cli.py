"""`guidediff sample` on DDGAN runs (issue 8): detection of a DDGAN source, the samples.npz
contract for 2-D points and images, and the one-line refusal of the diffusion-only options. CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidediff.cli import main
from guidediff.ddgan import train as ddgan_train
from guidediff.ddgan.config import load_config
from guidediff.ddgan.detect import is_ddgan_source
from guidediff.ddgan.sample import generate, load_generator

torch.set_num_threads(1)

TINY_UNET = ["generator.base_channels=16", "generator.channel_mult=[1, 2]", "generator.num_res_blocks=1",
             "generator.attention_resolutions=[]", "generator.nz=8", "discriminator.base_channels=8",
             "discriminator.channel_mult=[1, 2]"]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """An unconditional 2-D DDGAN made by the CLI exactly as a user would (tiny MLPs, 3 steps)."""
    out = tmp_path_factory.mktemp("ddgan") / "grid"
    assert main(["train-ddgan", "--data", "grid25", "--T", "2", "--steps", "3", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--samples", "8", "--set", "generator.hidden=16",
                 "--set", "discriminator.hidden=16"]) == 0
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A class-conditional 28×28 DDGAN, T = 3, 2 steps on random images (no dataset needed)."""
    out = tmp_path_factory.mktemp("ddgan") / "img"
    config = load_config("fmnist", None, TINY_UNET + ["diffusion.T=3", "train.steps=2", "train.batch_size=4",
                                                      'train.device="cpu"', "data.conditional=true"])
    g = torch.Generator().manual_seed(0)
    data = ddgan_train.TrainingData(torch.randint(0, 256, (16, 28, 28, 1), generator=g, dtype=torch.uint8),
                                    torch.arange(16) % 10, 10, (1, 28, 28))
    ddgan_train.train(config, out, progress=False, data=data)
    return out


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    from guidediff.train import train
    from train_helpers import tiny_arrays, tiny_config

    path = tmp_path_factory.mktemp("diffusion")
    train(tiny_config("train.steps=1", "train.sample_every=100"), path, dataset=tiny_arrays(), progress=False,
          log=lambda _m: None)
    return path


def sample(source, out, *extra):
    return main(["sample", str(source), "--out", str(out), "--device", "cpu", *extra])


def load_npz(path):
    with np.load(path / "samples.npz") as f:
        return {k: f[k] for k in f.files}


# -- detection ---------------------------------------------------------------------------------

def test_ddgan_sources_are_recognised_in_every_form(grid_run, image_run, tmp_path):
    ckpt = ddgan_train.read_ddgan_checkpoint(grid_run, parts=())[0]
    for source in (grid_run, image_run, str(grid_run), ckpt, grid_run / "checkpoints", grid_run / "model.safetensors"):
        assert is_ddgan_source(source), source
    # a run cut off before its first checkpoint holds only config.json
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text((grid_run / "config.json").read_text())
    assert is_ddgan_source(tmp_path / "early")


def test_diffusion_models_and_names_are_not_ddgan(diffusion_run, grid_run, tmp_path):
    for source in (diffusion_run, diffusion_run / "checkpoints", diffusion_run / "model.safetensors",
                   diffusion_run / "config.json", "fmnist-cfg", tmp_path / "missing", tmp_path):
        assert not is_ddgan_source(source), source
    # a damaged DDGAN file is left to the loader, which names the damage
    data = (grid_run / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:6])
    assert not is_ddgan_source(tmp_path / "cut.safetensors")
    # config.json of a diffusion run has no generator/discriminator sections
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text((diffusion_run / "config.json").read_text())
    assert not is_ddgan_source(tmp_path / "early")


# -- sampling ----------------------------------------------------------------------------------

def test_grid25_samples_are_2d_points_in_the_contract(grid_run, tmp_path, capsys):
    assert sample(grid_run, tmp_path / "s", "--n", "4", "--seed", "5", "--batch-size", "3") == 0
    printed = capsys.readouterr().out
    got = load_npz(tmp_path / "s")
    assert sorted(got) == ["w", "x", "y"]
    assert got["x"].dtype == np.float32 and got["x"].shape == (4, 2)
    assert got["y"].dtype == np.int64 and got["y"].tolist() == [-1] * 4
    assert got["w"].dtype == np.float32 and got["w"].tolist() == [0.0] * 4
    assert (tmp_path / "s" / "samples.png").is_file()
    assert "NFE per image: 2;" in printed and "ms per image" in printed
    # the CLI draws exactly what the library draws with the same seed
    G, config = load_generator(grid_run)
    np.testing.assert_array_equal(got["x"], generate(G, config, 4, seed=5, batch_size=3)["x"])


def test_conditional_images_per_class(image_run, tmp_path, capsys):
    assert sample(image_run, tmp_path / "s", "--classes", "3,7", "--n", "2", "--w", "0") == 0
    printed = capsys.readouterr().out
    got = load_npz(tmp_path / "s")
    assert got["x"].dtype == np.uint8 and got["x"].shape == (4, 28, 28, 1)
    assert got["y"].dtype == np.int64 and got["y"].tolist() == [3, 3, 7, 7]
    assert got["w"].dtype == np.float32 and not got["w"].any()
    assert (tmp_path / "s" / "grid_w0.png").is_file()
    assert "2 classes x 2" in printed and "NFE per image: 3;" in printed
    # the exported EMA generator samples the same images as the run directory it came from
    assert sample(image_run / "model.safetensors", tmp_path / "m", "--classes", "3,7", "--n", "2") == 0
    np.testing.assert_array_equal(load_npz(tmp_path / "m")["x"], got["x"])
    # no --classes: every class of the model
    assert sample(image_run, tmp_path / "all", "--n", "1") == 0
    assert load_npz(tmp_path / "all")["y"].tolist() == list(range(10))


@pytest.mark.parametrize("args, flag", [
    (["--w", "1"], "--w"), (["--w=0,2"], "--w"), (["--guidance", "classifier"], "--guidance"),
    (["--cfg-variant", "rescale"], "--cfg-variant"), (["--sampler", "ddim"], "--sampler"), (["--steps", "4"], "--steps"),
    (["--eta", "0"], "--eta"), (["--v", "0.3"], "--v"), (["--scale", "2"], "--scale"),
])
def test_diffusion_options_are_refused_in_one_line(grid_run, tmp_path, capsys, args, flag):
    assert sample(grid_run, tmp_path / "s", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} does not apply to a DDGAN model") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, message", [
    (["--classes", "0-2"], "is unconditional (no classes); leave --classes out"),
    (["--n", "0"], "--n must be >= 1"),
    (["--weights", "model", "--n", "1"], "holds only the EMA generator"),
])
def test_bad_input_is_one_line_exit_2(grid_run, tmp_path, capsys, args, message):
    source = grid_run / "model.safetensors" if "--weights" in args else grid_run
    assert sample(source, tmp_path / "s", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_class_out_of_range_names_the_model_classes(image_run, tmp_path, capsys):
    assert sample(image_run, tmp_path / "s", "--classes", "12") == 2
    err = capsys.readouterr().err
    assert "the model has 10 classes" in err and err.count("\n") == 1

