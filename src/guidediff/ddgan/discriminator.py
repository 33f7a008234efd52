"""Time-dependent DDGAN discriminators D(x_{t−1}, x_t, λ_t, c) -> logit (Xiao et al. 2022, §3.2).

D judges whether x_{t−1} is a plausible denoising of x_t at step t: the two are concatenated as
channels (images) or coordinates (2-D), and the time enters as an embedding of λ_t added inside
every block. Class conditioning is a projection discriminator (Miyato & Koyama 2018, eq. 3):
logit = ψ(h) + ⟨E[c], h⟩ over the pooled features h. No normalisation layers: the R1 penalty
is the only regulariser, and per-sample gradients stay per-sample, unless the minibatch standard
deviation is switched on (``minibatch_std``, as in DDGAN's own discriminator): then each logit also
sees its group's spread, and R1 of the logits' sum picks up those small cross terms, as there.
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


def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """The minibatch standard deviation (Karras et al. 2018, §3; DDGAN's discriminator, group 4):
    the batch of B feature maps [B, C, H, W] splits into groups of g samples (g the largest divisor
    of B up to ``group``; sample i joins group i mod B/g); each feature's standard deviation over
    its group, averaged over features and positions, is appended as one more channel. A group of
    near-identical fakes shows a spread that real data does not have."""
    b, c, height, width = h.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    spread = h.float().reshape(g, b // g, c, height, width).var(0, unbiased=False).add(1e-8).sqrt()
    per_group = spread.mean(dim=(1, 2, 3)).to(h.dtype)
    return torch.cat([h, per_group.repeat(g)[:, None, None, None].expand(b, 1, height, width)], dim=1)


class DownBlock(nn.Module):
    """Residual block: conv → (+ time embedding) → conv, then 2×2 average pooling on both paths;
    the sum is scaled by 1/√2 so activations keep their size through the depth. ``zero_init``
    starts the second conv at zero, so each block starts as its skip path (DDGAN's own init)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, zero_init: bool = False):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2)) + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.leaky_relu(h, 0.2))
        return (F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2.0)


class ImageDiscriminator(nn.Module):
    """D(x_prev [B, C, H, W], x_t [B, C, H, W], λ_t [B], c) -> logits [B]; one DownBlock per
    entry of channel_mult (28 → 14 → 7 → 3 for (1, 2, 4)), then sum pooling and a linear head.
    ``minibatch_std`` > 0 appends the minibatch standard deviation over groups of that size before
    a last 3×3 conv; ``zero_init_residual`` starts every block's second conv at zero."""

    def __init__(self, in_channels: int, base_channels: int = 64, channel_mult: tuple[int, ...] = (1, 2, 4),
                 num_classes: int = 0, minibatch_std: int = 0, zero_init_residual: bool = False):
        super().__init__()
        self.feature_dim = base_channels
        emb_dim = 4 * base_channels
        self.t_embed = time_embedding(self.feature_dim, emb_dim)
        self.input = conv3x3(2 * in_channels, base_channels)
        blocks, ch = [], base_channels
        for mult in channel_mult:
            blocks.append(DownBlock(ch, base_channels * mult, emb_dim, zero_init=zero_init_residual))
            ch = base_channels * mult
        self.blocks = nn.ModuleList(blocks)
        self.minibatch_std = minibatch_std
        self.final = conv3x3(ch + 1, ch) if minibatch_std > 0 else None
        self.head = nn.Linear(ch, 1)
        self.class_embed = nn.Embedding(num_classes, ch) if num_classes > 0 else None

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, lam: torch.Tensor,
                c: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.t_embed(lam_features(lam, self.feature_dim).to(self.head.weight.dtype))
        h = self.input(torch.cat([x_prev, x_t], dim=1))
        for block in self.blocks:
            h = block(h, emb)
        if self.final is not None:
            h = self.final(minibatch_std(h, self.minibatch_std))
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
