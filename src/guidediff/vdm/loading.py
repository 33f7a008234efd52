"""Load any trained ε-model as a VDMModel, so its variational bound can be evaluated.

A VDM checkpoint (weights with a ``vdm_config`` buffer) comes back as trained. Any other guidediff
model (e.g. a CFG UNet) comes back wrapped with the fixed schedule its config trained with and no
Fourier features: its bound is then the VLB of that ε-model under that schedule's endpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from guidediff.vdm.config import VDMConfig
from guidediff.vdm.model import CONFIG_BUFFER, VDMModel, config_from_tensors


def _fixed_schedule_vdm(config) -> VDMConfig:
    from guidediff.errors import require
    from guidediff.schedules import make_schedule

    d = config.diffusion
    require(getattr(d, "schedule_shift", 1.0) == 1.0,
            f"the bound of a model trained with diffusion.schedule_shift = {d.schedule_shift} is not supported yet "
            f"(the VDM's fixed schedule has no shift); evaluate a model trained without it")
    schedule = make_schedule(d.schedule, d.lam_min, d.lam_max)
    return VDMConfig(schedule=d.schedule, lam_min=schedule.lam_min, lam_max=schedule.lam_max, fourier=False,
                     variance_minimisation=False, antithetic=False)


def load_vdm(source: str | Path, device: str | torch.device = "cpu", weights: str = "ema"):
    """(VDMModel in eval mode on `device`, Config) from a checkpoint or run directory, an exported
    .safetensors model or a shipped model name."""
    from guidediff.checkpoint import check_state_dict
    from guidediff.sources import load_weights

    tensors, config, where = load_weights(source, weights)
    vdm = config_from_tensors(tensors)
    if vdm is None:
        model = VDMModel(config.model, _fixed_schedule_vdm(config))
        check_state_dict(tensors, model.unet.state_dict(), where)
        model.unet.load_state_dict(tensors)
        if getattr(config.diffusion, "precondition", "none") != "none":
            model.denoiser.precondition = config.diffusion  # the ε the model was trained and samples with
    else:
        model = vdm_from_tensors(tensors, config, vdm, where)
    return model.to(device).eval().requires_grad_(False), config


def vdm_from_tensors(tensors: dict[str, torch.Tensor], config, vdm: VDMConfig, where: str) -> VDMModel:
    """The VDMModel whose weights (a ``vdm_config`` buffer among them) are ``tensors``."""
    from guidediff.checkpoint import check_state_dict

    model = VDMModel(config.model, vdm)
    # the stored config bytes were just parsed; the rebuilt model's own copy replaces them, so a
    # config that gained a field since still loads.
    tensors = {**tensors, CONFIG_BUFFER: model.vdm_config}
    check_state_dict(tensors, model.state_dict(), where)
    model.load_state_dict(tensors)
    return model
