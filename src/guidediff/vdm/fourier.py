"""Fourier features of the network input (VDM §3.3, Appendix C) and the denoiser that uses them.

Channels sin(2^n·π·z) and cos(2^n·π·z) for n = n_min … n_max amplify the fine detail of z: with
data on the 8-bit grid (spacing 2/255 in [−1, 1]) the default n = 7, 8 have periods of about two
and one grid steps, which is what lets the network resolve the last bits at high SNR.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from guidediff.errors import require


def fourier_channels(channels: int, n_min: int = 7, n_max: int = 8) -> int:
    """Number of feature channels for an input of `channels` channels: 2·(n_max − n_min + 1)·C."""
    return 2 * (n_max - n_min + 1) * channels


def fourier_features(z: Tensor, n_min: int = 7, n_max: int = 8) -> Tensor:
    """[sin(2^n π z), cos(2^n π z)] for n = n_min…n_max, concatenated on the channel axis (VDM
    Appendix C). Computed in at least float32: at n = 8 the phase spans ±800 rad, which bf16 would
    round to whole radians."""
    dtype = torch.promote_types(z.dtype, torch.float32)
    freqs = (2.0 ** torch.arange(n_min, n_max + 1, device=z.device, dtype=dtype)) * math.pi
    # [B, C, K, H, W]: frequency next to channel, then flattened into the channel axis.
    phase = z.to(dtype).unsqueeze(2) * freqs.view(1, 1, -1, *([1] * (z.dim() - 2)))
    phase = phase.flatten(1, 2)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)


class FourierFeatures(nn.Module):
    """The feature map as a module (no parameters), so a model's config records n_min, n_max."""

    def __init__(self, n_min: int = 7, n_max: int = 8):
        super().__init__()
        require(n_min <= n_max, f"Fourier features need n_min <= n_max, got {n_min} > {n_max}")
        self.n_min, self.n_max = int(n_min), int(n_max)

    def channels(self, in_channels: int) -> int:
        return fourier_channels(in_channels, self.n_min, self.n_max)

    def forward(self, z: Tensor) -> Tensor:
        return fourier_features(z, self.n_min, self.n_max)

    def extra_repr(self) -> str:
        return f"n={self.n_min}..{self.n_max}"


class VDMDenoiser(nn.Module):
    """A denoiser ``(z, lam, c) -> eps_hat`` that feeds the network [z, features(z)].

    ``net`` is a UNet built with ``extra_input_channels = fourier.channels(in_channels)``;
    ``fourier=None`` passes z alone. Being a denoiser, it works with guidance.cfg and the samplers.
    """

    def __init__(self, net: nn.Module, fourier: FourierFeatures | None = None):
        super().__init__()
        self.net = net
        self.fourier = fourier
        # the DiffusionConfig of a CFG model trained with EDM preconditioning (loading.load_vdm sets it)
        self.precondition = None

    def forward(self, z: Tensor, lam: Tensor, c: Tensor | None = None) -> Tensor:
        if self.precondition is not None:
            from guidediff.precondition import wrap_for_config

            return wrap_for_config(self.net, self.precondition)(z, lam, c)
        if self.fourier is None:
            return self.net(z, lam, c)
        feats = self.fourier(z).to(z.dtype)
        return self.net(torch.cat([z, feats], dim=1), lam, c)
