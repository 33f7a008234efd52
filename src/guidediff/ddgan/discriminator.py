"""Time-dependent DDGAN discriminators D(x_{t−1}, x_t, λ_t, c) -> logit (Xiao et al. 2022, §3.2).

D judges whether x_{t−1} is a plausible denoising of x_t at step t: the two are concatenated as
channels (images) or coordinates (2-D), and the time enters as an embedding of λ_t added inside
every block. Class conditioning is a projection discriminator (Miyato & Koyama 2018, eq. 3):
logit = ψ(h) + ⟨E[c], h⟩ over the pooled features h. No normalisation layers: the R1 penalty
is the only regulariser, and per-sample gradients stay per-sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from guidediff.ddgan.generator import fourier_features
from guidediff.nets.layers import conv3x3, lam_features


def time_embedding(feature_dim: int, emb_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(feature_dim, emb_dim), nn.LeakyReLU(0.2), nn.Linear(emb_dim, emb_dim))


class DownBlock(nn.Module):
    """Residual block: conv → (+ time embedding) → conv, then 2×2 average pooling on both paths;
    the sum is scaled by 1/√2 so activations keep their size through the depth."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2)) + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.leaky_relu(h, 0.2))
        return (F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2.0)


class ImageDiscriminator(nn.Module):
    """D(x_prev [B, C, H, W], x_t [B, C, H, W], λ_t [B], c) -> logits [B]; one DownBlock per
    entry of channel_mult (28 → 14 → 7 → 3 for (1, 2, 4)), then sum pooling and a linear head."""

    def __init__(self, in_channels: int, base_channels: int = 64, channel_mult: tuple[int, ...] = (1, 2, 4),
                 num_classes: int = 0):
        super().__init__()
        self.feature_dim = base_channels
        emb_dim = 4 * base_channels
        self.t_embed = time_embedding(self.feature_dim, emb_dim)
        self.input = conv3x3(2 * in_channels, base_channels)
        blocks, ch = [], base_channels
        for mult in channel_mult:
            blocks.append(DownBlock(ch, base_channels * mult, emb_dim))
            ch = base_channels * mult
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(ch, 1)
        self.class_embed = nn.Embedding(num_classes, ch) if num_classes > 0 else None

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, lam: torch.Tensor,
                c: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.t_embed(lam_features(lam, self.feature_dim).to(self.head.weight.dtype))
        h = self.input(torch.cat([x_prev, x_t], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        h = F.leaky_relu(h, 0.2).sum(dim=(2, 3))
        out = self.head(h)[:, 0]
        if self.class_embed is not None and c is not None:
            out = out + (self.class_embed(c) * h).sum(dim=1)
        return out


class MLPDiscriminator(nn.Module):
    """D(x_prev [B, d], x_t [B, d], λ_t [B], c) -> logits [B] for 2-D data."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, num_classes: int = 0, fourier: int = 0):
        super().__init__()
        self.fourier = fourier
        self.feature_dim = 32
        self.x_embed = nn.Linear(dim * (2 + 2 * fourier), hidden)
        self.t_embed = time_embedding(self.feature_dim, hidden)
        self.body = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.head = nn.Linear(hidden, 1)
        self.class_embed = nn.Embedding(num_classes, hidden) if num_classes > 0 else None

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, lam: torch.Tensor,
                c: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.t_embed(lam_features(lam, self.feature_dim).to(self.head.weight.dtype))
        # Fine detail matters in the candidate x_{t−1}; x_t is only the (noisy) condition.
        h = self.x_embed(torch.cat([fourier_features(x_prev, self.fourier), x_t], dim=1)) + emb
        for layer in self.body:
            h = layer(F.leaky_relu(h, 0.2))
        h = F.leaky_relu(h, 0.2)
        out = self.head(h)[:, 0]
        if self.class_embed is not None and c is not None:
            out = out + (self.class_embed(c) * h).sum(dim=1)
        return out
