"""Building blocks of the ADM-style UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs").

Shared by the denoising UNet and the noisy classifier: the λ/class embedding, a GroupNorm helper,
residual blocks with adaptive GroupNorm (scale-shift from the embedding), multi-head self-attention
and plain up/downsampling layers. Every forward here is free of data-dependent Python control flow
and `.item()` calls, so the nets compile with `torch.compile(fullgraph=True)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# λ is mapped to LAM_SCALE·λ before the sinusoids. The standard frequencies 1 … 1/10000 were tuned
# for DDPM's integer timesteps 0 … 1000; with the scale 25 the usual λ range [-20, 20] spans the same
# 1000 units, so the fastest feature resolves Δλ ≈ 0.04 and the slowest one still varies smoothly
# across the whole range. λ outside [-20, 20] (VDM's learned ends) only extends the phase.
LAM_SCALE = 25.0
MAX_PERIOD = 10000.0


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `module` (only those with requires_grad if trainable_only)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of `channels` that is at most `max_groups` (32 as in ADM when it divides)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the most groups ≤ 32 that divide `channels`."""
    return nn.GroupNorm(num_groups(channels, max_groups), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of `module` (ADM: each residual branch starts as the identity map)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def lam_features(lam: torch.Tensor, dim: int, scale: float = LAM_SCALE) -> torch.Tensor:
    """Sinusoidal features [cos(f_k·s·λ), sin(f_k·s·λ)] of the log-SNR λ, [B] -> [B, dim].

    Transformer positional encoding (Vaswani et al. 2017) as used for timesteps in DDPM/ADM, with
    frequencies f_k = MAX_PERIOD^(-k/half) applied to s·λ (s = LAM_SCALE, see its comment).
    Computed in at least float32: bf16 phases of size ~500 would lose all fine frequencies.
    """
    half = dim // 2
    dtype = torch.promote_types(lam.dtype, torch.float32)
    k = torch.arange(half, device=lam.device, dtype=dtype)
    freqs = torch.exp(-math.log(MAX_PERIOD) * k / half)
    phase = (scale * lam.to(dtype))[:, None] * freqs[None, :]
    feats = torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)
    if dim % 2:
        feats = F.pad(feats, (0, 1))
    return feats


class LamClassEmbedding(nn.Module):
    """emb = MLP(sinusoid(λ)) + E[c]; E has num_classes + 1 rows, the last being the learned null token ∅.

    With num_classes == 0 there is no class table and c is ignored. A conditional model called with
    c=None gets the null token for every sample (the unconditional branch of CFG).
    """

    def __init__(self, feature_dim: int, emb_dim: int, num_classes: int = 0):
        super().__init__()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(feature_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

    def forward(self, lam: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        feats = lam_features(lam, self.feature_dim)
        emb = self.mlp(feats.to(self.mlp[0].weight.dtype))
        if self.class_embed is not None:
            if c is None:
                c = torch.full(lam.shape, self.num_classes, dtype=torch.long, device=lam.device)
            emb = emb + self.class_embed(c)
        return emb


class EmbBlock(nn.Module):
    """Marker: a block whose forward takes (x, emb)."""


class ResBlock(EmbBlock):
    """ADM residual block with adaptive GroupNorm, optionally resampling (BigGAN-style up/down).

    h = conv(SiLU(GN(x)));  h = GN(h)·(1 + scale) + shift  with (scale, shift) = Linear(SiLU(emb));
    out = skip(x) + conv_0(dropout(SiLU(h))), conv_0 zero-initialised so the block starts as skip(x).
    With resample="up"/"down" both paths are resampled (nearest ×2 / 2×2 average) after the first
    activation, as in ADM's resblock_updown.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        resample: str | None = None,
    ):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = group_norm(in_channels)
        self.in_conv = conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.out_norm = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(conv3x3(out_channels, out_channels))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = self.in_conv(self._resample(h))
        x = self._resample(x)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, residual, zero-initialised output projection.

    qkv = Conv1x1(GN(x)) with channels laid out as [q | k | v], each split into `num_heads` contiguous
    slices of C/num_heads channels; out = x + Conv1x1_0(softmax(q kᵀ/√d) v) (Vaswani et al. 2017).
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # Going through [B, H, W, 3C] is free for channels_last input and gives q, k, v unit stride
        # along the head dimension, which the fused (flash / memory-efficient) SDPA kernels want.
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, HW, d]
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj(a)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3×3 conv (used when resblock_updown is off)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour ×2, then a 3×3 conv (used when resblock_updown is off)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbSequential(nn.ModuleList):
    """Apply layers in order, passing the embedding to those that take one (EmbBlock)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, EmbBlock) else layer(x)
        return x
