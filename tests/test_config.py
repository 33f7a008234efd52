"""Config: TOML loading, checked overrides, close-match suggestions, types, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guidediff.config import Config, all_keys, load_config, load_json_config, parse_value, set_value
from guidediff.errors import UsageError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["fmnist_cfg.toml", "fmnist_cfg_v1.toml", "folder64_cfg.toml", "tiny_test.toml"])
def test_shipped_configs_load_and_validate(name):
    config = load_config(CONFIGS / name)
    assert config.diffusion.schedule == "cfg"
    assert config.train.batch_size >= 1


def test_reference_config_values():
    c = load_config(CONFIGS / "fmnist_cfg.toml")
    assert (c.diffusion.precondition, c.diffusion.loss_weight, c.diffusion.lam_sampling) == ("edm", "edm", "lognormal")
    assert (c.diffusion.lam_min, c.diffusion.lam_max, c.diffusion.p_uncond) == (-20.0, 20.0, 0.2)
    assert (c.train.batch_size, c.train.lr, c.train.lr_schedule, c.train.steps) == (128, 2e-4, "cosine", 24000)
    assert c.model.channel_mult == (1, 2, 2) and c.model.attention_resolutions == (14, 7)
    v1 = load_config(CONFIGS / "fmnist_cfg_v1.toml")  # the previous recipe stays selectable
    assert (v1.diffusion.precondition, v1.diffusion.p_uncond, v1.train.lr_schedule) == ("none", 0.1, "constant")
    assert (v1.train.batch_size, v1.train.lr, v1.train.ema_decay) == (128, 2e-4, 0.9999)


def test_folder_config_model_follows_data_resolution():
    c = load_config(CONFIGS / "folder64_cfg.toml")
    assert (c.model.image_size, c.model.in_channels) == (64, 3)
    c = load_config(CONFIGS / "folder64_cfg.toml", ["data.resolution=32"])
    assert c.model.image_size == 32


def test_overrides_are_parsed_as_toml_literals():
    c = load_config(CONFIGS / "tiny_test.toml", [
        "train.lr=3e-4", "train.steps=7", "train.compile=true", "sample.w=[0, 1.5]",
        "model.channel_mult=[1,2]", "data.name=/some/folder", "diffusion.lam_min=-10", "out_dir=runs/x"])
    assert c.train.lr == 3e-4 and isinstance(c.train.lr, float)
    assert c.train.steps == 7 and c.train.compile is True
    assert c.sample.w == [0.0, 1.5]
    assert c.model.channel_mult == (1, 2)
    assert c.data.name == "/some/folder"
    assert c.diffusion.lam_min == -10.0 and isinstance(c.diffusion.lam_min, float)
    assert c.out_dir == "runs/x"
    assert parse_value('"quoted"') == "quoted" and parse_value("not toml") == "not toml"


def test_unknown_key_lists_close_matches():
    with pytest.raises(UsageError, match=r"unknown config key 'train.lrr'; did you mean train.lr"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(UsageError, match=r"unknown config section 'trian'; did you mean train\?"):
        load_config(None, ["trian.lr=1"])
    with pytest.raises(UsageError, match=r"did you mean train.batch_size"):
        load_config(None, ["batch_size=3"])
    with pytest.raises(UsageError, match=r"did you mean model.base_channels"):
        load_config(None, ["model.base_chanels=3"])


def test_unknown_key_in_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlearning_rate = 1e-4\n")
    with pytest.raises(UsageError, match="unknown config key 'train.learning_rate'"):
        load_config(path)
    path.write_text("[train\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("item, expected", [
    ('train.lr="fast"', "must be a number"),
    ("train.steps=1.5", "must be an integer"),
    ("train.deterministic=1", "must be true or false"),
    ("model.channel_mult=3", "must be a list of integers"),
    ("sample.w=[0, \"a\"]", "must be a list of numbers"),
    ("train.mixed_precision=fp8", "mixed_precision 'fp8' is unknown"),
    ("train.compile=maybe", 'must be true, false or "auto"'),
    ("diffusion.p_uncond=1.5", "p_uncond must lie in"),
    ("train.batch_size=0", "batch_size must be >= 1"),
    ("train.warmup", "not of the form section.key=value"),
])
def test_bad_values_are_one_line_errors(item, expected):
    with pytest.raises(UsageError, match=expected) as info:
        load_config(None, [item])
    assert "\n" not in str(info.value)


def test_int_accepted_where_float_expected():
    c = load_config(None, ["train.lr=1", "train.grad_clip=0"])
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float)


def test_json_round_trip(tmp_path):
    c = load_config(CONFIGS / "fmnist_cfg.toml", ["sample.w=[0, 2]", "train.compile=false"])
    d = json.loads(c.to_json())
    assert d["model"]["channel_mult"] == [1, 2, 2]
    assert Config.from_dict(d) == c
    (tmp_path / "config.json").write_text(c.to_json())
    assert load_json_config(tmp_path / "config.json") == c


def test_every_listed_key_can_be_set():
    c = Config()
    for key in all_keys():
        section, _, field = key.partition(".")
        current = getattr(getattr(c, section), field) if field else getattr(c, section)
        set_value(c, key, list(current) if isinstance(current, tuple) else current)


def test_cli_accepts_dotted_options_and_set():
    from guidediff.cli import build_parser

    args = build_parser().parse_args(["train", "--config", "x.toml", "--train.lr=1e-3", "--model.dropout", "0.2",
                                      "--set", "train.steps=5", "--out", "runs/a.b"])
    assert args.set == ["train.steps=5", "train.lr=1e-3", "model.dropout=0.2"]
    assert args.out == "runs/a.b"


def test_cli_unknown_dotted_option_suggests(tmp_path, capsys):
    from guidediff.cli import main

    code = main(["train", "--config", str(CONFIGS / "tiny_test.toml"), "--train.stpes=3", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "did you mean train.steps" in err
