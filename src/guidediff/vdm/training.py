"""Training a VDM through the one training loop (guidediff.train): the bound in bits/dim is the
loss closure, ``VDMModel`` the network. `guidediff train --config configs/fmnist_vdm.toml` comes
here because the config has a ``[vdm]`` table; benchmarks/vdm_ablation.py calls ``train_vdm``."""

from __future__ import annotations

from pathlib import Path

import torch

from guidediff.vdm.config import VDMConfig


def has_vdm_table(config_path: str | Path | None) -> bool:
    """Does this TOML config describe a VDM (a ``[vdm]`` table)?"""
    from guidediff.config import load_toml

    return config_path is not None and "vdm" in load_toml(config_path)


def load_config_without_vdm(path: str | Path, overrides: list[str]):
    """The Config of a VDM run config: its training sections, the [vdm] table left out."""
    from guidediff.vdm.config import load_vdm_run_config

    return load_vdm_run_config(path, overrides)[0]


def vdm_for_run(config_path: str | Path | None, overrides: list[str], run_dir: Path, resume: bool) -> VDMConfig | None:
    """The VDMConfig a training command trains, None for a plain CFG model: the run's latest
    checkpoint's when resuming one (the weights carry it), else the config file's [vdm] table;
    ``vdm.key=value`` overrides apply to either."""
    import dataclasses

    from guidediff.checkpoint import latest_checkpoint, load_checkpoint
    from guidediff.config import parse_override
    from guidediff.vdm.config import load_vdm_run_config
    from guidediff.vdm.model import config_from_tensors

    latest = latest_checkpoint(run_dir / "checkpoints") if resume else None
    if latest is not None:
        vdm = config_from_tensors(load_checkpoint(latest, parts=("model",)).tensors["model"])
        if vdm is None:
            return None
        fields = dataclasses.asdict(vdm)
        for item in overrides:
            key, value = parse_override(item)
            if key.startswith("vdm."):
                fields[key[4:]] = value
        return VDMConfig.from_dict(fields)
    if not has_vdm_table(config_path):
        return None
    return load_vdm_run_config(config_path, overrides)[1]


def train_vdm(config, run_dir: str | Path, vdm: VDMConfig, *, dataset=None, sample_fn=None, **train_kwargs):
    """Train the VDM that ``vdm`` describes on ``config``'s data and training settings; returns
    guidediff.train's TrainResult. The UNet gets the Fourier features' extra input channels, labels
    are dropped to ∅ with probability diffusion.p_uncond (so the model can be guided), and the
    sample grids (``sample_fn`` default) use the config's sample.steps and sample.n on the model's
    own schedule. ``train_kwargs`` go to guidediff.train.train (resume, time_limit_s, ...)."""
    from guidediff.runtime import derive_seed
    from guidediff.train import resolve_model_config, train
    from guidediff.vdm.model import VDMModel, vdm_loss, vdm_unet_config
    from guidediff.vdm.sample import vdm_sample_fn

    if dataset is None:
        from guidediff.data.images import load_dataset

        d = config.data
        dataset = load_dataset(d.name, "train", data_dir=d.data_dir, resolution=d.resolution, channels=d.channels,
                               skip_bad=d.skip_bad_images)
    resolve_model_config(config, dataset)  # the net is built here, so the data decides its shape here
    config.model = vdm_unet_config(config.model, vdm)
    torch.manual_seed(derive_seed(config.train.seed, "init"))  # what train() does before it builds a net
    net = VDMModel(config.model, vdm)
    loss_fn = vdm_loss(vdm, p_uncond=config.diffusion.p_uncond, null_class=config.model.num_classes)
    if sample_fn is None:
        sample_fn = vdm_sample_fn(steps=config.sample.steps, per_class=config.sample.n)
    return train(config, run_dir, loss_fn=loss_fn, net=net, dataset=dataset, sample_fn=sample_fn, **train_kwargs)
