"""Load any trained ε-model as a VDMModel, so its variational bound can be evaluated.

A VDM checkpoint (weights with a ``vdm_config`` buffer) comes back as trained. Any other guidediff
model (e.g. a CFG UNet) comes back wrapped with the fixed schedule its config trained with and no
Fourier features: its bound is then the VLB of that ε-model under that schedule's endpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from guidediff.errors import UsageError, require
from guidediff.vdm.config import VDMConfig
from guidediff.vdm.model import CONFIG_BUFFER, VDMModel, config_from_tensors


def _fixed_schedule_vdm(config) -> VDMConfig:
    from guidediff.schedules import make_schedule

    d = config.diffusion
    schedule = make_schedule(d.schedule, d.lam_min, d.lam_max)
    return VDMConfig(schedule=d.schedule, lam_min=schedule.lam_min, lam_max=schedule.lam_max, fourier=False,
                     variance_minimisation=False, antithetic=False)


def load_vdm(source: str | Path, device: str | torch.device = "cpu", weights: str = "ema"):
    """(VDMModel in eval mode on `device`, Config) from a checkpoint or run directory, an exported
    .safetensors model or a shipped model name."""
    from guidediff import models
    from guidediff.checkpoint import TENSOR_FILES, check_state_dict, load_checkpoint, read_model_file
    from guidediff.config import Config

    require(weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(source).expanduser()
    if not path.exists() and models.is_shipped_name(str(source)):
        path = models.shipped_path(str(source))
    if path.is_dir():
        ck = load_checkpoint(path, parts=(weights,))
        tensors, config, where = ck.tensors[weights], ck.config, str(ck.path / TENSOR_FILES[weights])
    elif path.is_file() and path.suffix == ".safetensors":
        tensors, meta = read_model_file(path)
        config, where = Config.from_dict(meta["config"], source=str(path)), str(path)
    elif path.exists():
        raise UsageError(f"{path} is neither a checkpoint directory nor a .safetensors model; pass one of those")
    else:
        raise UsageError(f"{source} does not exist and is not a shipped model name; pass a checkpoint or run "
                         f"directory, or a .safetensors model")
    vdm = config_from_tensors(tensors)
    if vdm is None:
        model = VDMModel(config.model, _fixed_schedule_vdm(config))
        check_state_dict(tensors, model.unet.state_dict(), where)
        model.unet.load_state_dict(tensors)
    else:
        model = VDMModel(config.model, vdm)
        # the stored config bytes were just parsed; the rebuilt model's own copy replaces them, so a
        # config that gained a field since still loads.
        tensors = {**tensors, CONFIG_BUFFER: model.vdm_config}
        check_state_dict(tensors, model.state_dict(), where)
        model.load_state_dict(tensors)
    return model.to(device).eval().requires_grad_(False), config
