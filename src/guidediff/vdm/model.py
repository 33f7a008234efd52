"""A VDM as one module: denoiser (UNet, optionally fed Fourier features) + noise schedule.

``VDMModel(unet_config, vdm_config)(x, c, u, eps, eps_0)`` returns the bound's three terms per
image, so the whole objective is one ``forward`` (what DDP and the training loop need). For
sampling and guidance use ``model.denoiser`` and ``model.schedule`` like any other pair:

    lams = lam_grid(model.schedule, 100)                    # the learned schedule's grid
    x = samplers.sample(cfg(model.denoiser, w, null), z, lams, c)

The model carries its VDMConfig as JSON bytes in a uint8 buffer (``vdm_config``): every path that
moves weights (checkpoint, EMA, exported model) moves the config with them, and ``load_vdm``
rebuilds the model from the weights file plus the run's Config alone.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import torch
from torch import Tensor, nn

from guidediff.errors import UsageError, require
from guidediff.nets.unet import UNet, UNetConfig
from guidediff.vdm.bound import BoundTerms, bits_per_dim, dims_of, vlb_terms
from guidediff.vdm.config import VDMConfig
from guidediff.vdm.fourier import FourierFeatures, VDMDenoiser
from guidediff.vdm.schedule import LearnedSchedule

CONFIG_BUFFER = "vdm_config"
# Whether the VDM loss closure declares itself graph-safe (guidediff.train_step.graph_safe), so
# that train.cuda_graph = "auto" captures its step on CUDA. The closure reads nothing on the host,
# its graph-ready step equals the classic one (tests/test_vdm_train_step.py), and its capture was
# verified on an H200 (the CUDA test there, then a 24k-step run; docs/vdm.md, "Training speed").
GRAPH_SAFE = True


def vdm_unet_config(unet: UNetConfig, vdm: VDMConfig) -> UNetConfig:
    """The UNet config with extra_input_channels set for the VDM's Fourier features."""
    return dataclasses.replace(unet, extra_input_channels=vdm.extra_channels(unet.in_channels))


def make_vdm_schedule(vdm: VDMConfig):
    """The schedule a VDMConfig names: a LearnedSchedule (a module) or a fixed schedule."""
    if vdm.schedule == "learned":
        return LearnedSchedule(vdm.schedule_hidden, gamma_0=-vdm.lam_max, gamma_1=-vdm.lam_min)
    from guidediff.schedules import make_schedule

    return make_schedule(vdm.schedule, vdm.lam_min, vdm.lam_max)


def _config_bytes(vdm: VDMConfig) -> Tensor:
    return torch.tensor(list(json.dumps(vdm.to_dict(), sort_keys=True).encode()), dtype=torch.uint8)


def config_from_tensors(tensors: dict[str, Tensor]) -> VDMConfig | None:
    """The VDMConfig stored in a state dict's ``vdm_config`` buffer; None for a non-VDM model."""
    raw = tensors.get(CONFIG_BUFFER)
    if raw is None:
        return None
    try:
        d = json.loads(bytes(raw.to("cpu", torch.uint8).tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError("the model's vdm_config buffer is unreadable; the weights file is damaged: train or "
                         "export it again") from None
    return VDMConfig.from_dict(d)


class VDMModel(nn.Module):
    """Denoiser + schedule; forward(x, c, u, eps, eps_0) -> BoundTerms per image, in nats.

    A fixed schedule is a plain attribute (no parameters); a learned one is a submodule and trains
    with the network. ``unet`` must have extra_input_channels matching the Fourier features
    (``vdm_unet_config`` sets it).
    """

    def __init__(self, unet: UNetConfig, vdm: VDMConfig | None = None):
        super().__init__()
        vdm = vdm or VDMConfig()
        vdm.validate()
        want = vdm.extra_channels(unet.in_channels)
        require(unet.extra_input_channels == want,
                f"the UNet has extra_input_channels={unet.extra_input_channels} but the VDM's Fourier features "
                f"need {want}; build the UNet config with guidediff.vdm.vdm_unet_config")
        self.vdm = vdm
        fourier = FourierFeatures(vdm.fourier_n_min, vdm.fourier_n_max) if vdm.fourier else None
        self.denoiser = VDMDenoiser(UNet(unet), fourier)
        self.schedule = make_vdm_schedule(vdm)
        self.register_buffer(CONFIG_BUFFER, _config_bytes(vdm))

    @property
    def unet(self) -> UNet:
        return self.denoiser.net

    @property
    def num_classes(self) -> int:
        return self.unet.config.num_classes

    def forward(self, x: Tensor, c: Tensor, u: Tensor, eps: Tensor, eps_0: Tensor,
                T: int | None = None) -> BoundTerms:
        """The three bound terms per image (see guidediff.vdm.bound.vlb_terms); T None means the
        config's timesteps. The schedule's shape gets the variance gradient while training."""
        T = self.vdm.timesteps if T is None else T
        variance_grad = self.training and self.vdm.variance_minimisation
        return vlb_terms(self.denoiser, x, c, self.schedule, u, eps, eps_0, T=T, variance_grad=variance_grad)


def vdm_loss(vdm: VDMConfig, *, p_uncond: float, null_class: int) -> Callable:
    """A loss closure for guidediff.train: the bound in bits/dim, mean over the batch.

    Randomness (u, ε, ε_0, label dropout) is drawn for the global batch from ctx.generator and
    sliced to this process, as the CFG loss does. Labels are replaced by the null token ∅ with
    probability p_uncond (CFG paper), so the model can be guided with guidance.cfg."""
    from guidediff.losses import drop_condition, sample_u

    def loss_fn(model: nn.Module, x: Tensor, c: Tensor, ctx) -> Tensor:
        n, g, sl = ctx.global_batch, ctx.generator, slice(ctx.start, ctx.stop)
        u = sample_u(n, x.device, antithetic=vdm.antithetic, generator=g)[sl]
        eps = torch.randn((n, *x.shape[1:]), generator=g, device=x.device)[sl]
        eps_0 = torch.randn((n, *x.shape[1:]), generator=g, device=x.device)[sl]
        drop = torch.rand(n, generator=g, device=x.device)[sl] < p_uncond
        if null_class:
            c = drop_condition(c, drop, null_class)
        terms = model(x, c, u, eps, eps_0)
        return bits_per_dim(terms.total.mean(), dims_of(x))

    loss_fn.graph_safe = GRAPH_SAFE
    return loss_fn


class VDMSamplingNet(nn.Module):
    """A trained VDM as the ε-network that ``generation.generate`` (and so `guidediff sample`) draws
    from: ``forward(z, lam, c)`` is its denoiser (Fourier features included) and ``schedule`` its
    own, possibly learned, schedule, whose λ grid ``generate`` uses instead of the config's."""

    def __init__(self, model: VDMModel):
        super().__init__()
        self.model = model

    @property
    def schedule(self):
        return self.model.schedule

    @property
    def config(self) -> UNetConfig:
        return self.model.unet.config

    def forward(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        return self.model.denoiser(z, lam, c)
