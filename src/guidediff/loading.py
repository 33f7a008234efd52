"""The network a model source holds, in eval mode and ready to sample: a guidediff UNet, a
distilled student, a VDM, or a diffusers UNet2DModel directory (guidediff.external). Where the
weights and config come from is guidediff.sources."""

from __future__ import annotations

from pathlib import Path

import torch

from guidediff.checkpoint import check_state_dict
from guidediff.config import Config
from guidediff.errors import require
from guidediff.sources import load_weights


def model_config(source: str | Path) -> Config:
    """The Config of anything ``load_model`` accepts, without building the network where it can."""
    from guidediff.external.diffusers_unet import is_diffusers_unet, load_diffusers_model

    if is_diffusers_unet(source):
        return load_diffusers_model(source)[1]
    return load_weights(source)[1]


def load_model(source: str | Path, device: str | torch.device = "cpu", weights: str = "ema",
               null_class: int | None = None):
    """(net in eval mode on `device`, Config) from a checkpoint or run directory, an exported
    .safetensors model, a shipped model name such as 'fmnist-cfg', or a diffusers UNet2DModel
    directory (``external.diffusers_unet``; ``null_class`` is its null label, default the last).
    Only the path is needed: the config travels inside. A distilled student (``guidediff distill``;
    its weights include the w embedding) comes back as ``nets.w_conditioned.WConditionedUNet``, a
    VDM (weights with a ``vdm_config`` buffer) as ``vdm.model.VDMSamplingNet``."""
    from guidediff.external.diffusers_unet import is_diffusers_unet, load_diffusers_model
    from guidediff.nets.unet import UNet
    from guidediff.nets.w_conditioned import WConditionedUNet

    if is_diffusers_unet(source):
        return load_diffusers_model(source, device, null_class=null_class)
    require(null_class is None, f"{source} is a guidediff model: its null label is always num_classes; leave out "
                                "the null class (it is for diffusers models)")
    tensors, config, where = load_weights(source, weights)
    from guidediff.vdm.model import config_from_tensors

    vdm = config_from_tensors(tensors)
    if vdm is not None:  # a VDM (`guidediff train` with a [vdm] config): its denoiser on its own schedule
        from guidediff.vdm.loading import vdm_from_tensors
        from guidediff.vdm.model import VDMSamplingNet

        net = VDMSamplingNet(vdm_from_tensors(tensors, config, vdm, where))
        return net.to(device).eval().requires_grad_(False), config
    student = any(k.startswith("w_embed.") for k in tensors)
    net = (WConditionedUNet if student else UNet)(config.model)
    check_state_dict(tensors, net.state_dict(), where)
    net.load_state_dict(tensors)
    net.source = str(source)  # named in errors about what the net computes (sampling.require_finite)
    # its ε is defined with these settings (EDM preconditioning): a guide net needs them where its
    # config does not travel with it (generation.generate's guide_net)
    net.diffusion_config = config.diffusion
    return net.to(device).eval().requires_grad_(False), config


def load_guide_model(source: str | Path, device: str | torch.device, main_net):
    """The autoguidance guide at ``source`` (the net only). A diffusers guide takes the main
    model's null label when the main model is a diffusers one too: both must read the same label
    as "unconditional", whatever --null-class said; a guidediff model's null label is fixed."""
    from guidediff.external.diffusers_unet import is_diffusers_unet

    null_class = getattr(main_net, "null_class", None) if is_diffusers_unet(source) else None
    return load_model(source, device, null_class=null_class)[0]
