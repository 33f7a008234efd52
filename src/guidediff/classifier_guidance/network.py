"""The noisy classifier p_φ(c | z_λ, λ) of classifier guidance, ADM's shape (Dhariwal & Nichol 2021,
Sec. 4 and their classifier: the UNet's downsampling half with an attention-pooling head).

`NoisyClassifier(config)(z, lam) -> logits [B, num_classes]`. ``config`` is the same UNetConfig a
diffusion model uses: its ``num_classes`` is the size of the label set (the logits), while the
encoder is built with ``num_classes = 0`` so it sees λ and never the label it must predict.
The state-dict keys are ``encoder.*`` and ``head.*``; ``is_noisy_classifier_state`` tells a
classifier's weights from a diffusion UNet's (``encoder.*``, ``up.*``, ``out.*``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from guidediff.errors import require
from guidediff.nets.layers import group_norm
from guidediff.nets.unet import UNetConfig, UNetEncoder


class AttentionPool(nn.Module):
    """Attention pooling (CLIP/ADM): the mean feature plus a learned position embedding queries all
    positions; the attended vector is projected to the output. [B, C, H, W] -> [B, out_dim]."""

    def __init__(self, channels: int, resolution: int, heads: int, out_dim: int):
        super().__init__()
        require(channels % heads == 0, f"attention pooling over {channels} channels cannot use {heads} heads")
        self.heads = heads
        self.pos = nn.Parameter(torch.randn(resolution * resolution + 1, channels) / channels**0.5)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, ch, _, _ = h.shape
        tokens = h.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.pos.to(tokens.dtype)
        d = ch // self.heads
        q = self.q(tokens[:, :1]).view(b, 1, self.heads, d).transpose(1, 2)
        k, v = self.kv(tokens).view(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, d]
        return self.proj(out.transpose(1, 2).reshape(b, ch))


class NoisyClassifier(nn.Module):
    """UNetEncoder (input conv, downsampling levels, middle block; λ-embedding only) → GroupNorm →
    SiLU → attention pooling → logits over ``config.num_classes``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        require(config.num_classes >= 2, f"a noisy classifier needs at least 2 classes, got num_classes={config.num_classes}")
        self.config = config
        self.encoder = UNetEncoder(dataclasses.replace(config, num_classes=0))
        ch = self.encoder.out_channels
        self.norm = group_norm(ch)
        self.head = AttentionPool(ch, self.encoder.bottom_resolution, max(1, config.heads(ch)), config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, num_classes] in at least float32 (also under bf16 autocast). ``c`` is accepted
        and ignored, so the training loop's net(z, lam, c) calls work unchanged."""
        h, _, _ = self.encoder(z, lam, None)
        return self.head(F.silu(self.norm(h))).to(torch.promote_types(z.dtype, torch.float32))

    def log_prob(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log p_φ(c | z_λ) [B] (log-softmax at the asked class)."""
        return torch.log_softmax(self.forward(z, lam), dim=1).gather(1, c.long()[:, None])[:, 0]

    def config_dict(self) -> dict:
        return self.config.to_dict()


def is_noisy_classifier_state(state: dict[str, torch.Tensor]) -> bool:
    """True for a NoisyClassifier's state dict (it has a ``head``; a diffusion UNet has ``up``/``out``)."""
    return any(k.startswith("head.") for k in state) and not any(k.startswith("up.") for k in state)


class NoisyMLPClassifier(nn.Module):
    """p_φ(c | z_λ, λ) for low-dimensional (2-D toy) data: z [B, dim], λ [B] -> logits [B, num_classes].
    The λ embedding is the UNet's (no class table: the classifier must not see the label).

    The net reads α_λ·z, not z: the same information (λ is known), but ∇_z log p_φ then carries the
    factor α_λ that the exact ∇_z log p(c | z_λ) has at low SNR. Without it an imperfect classifier's
    O(1) gradient at λ_min = −20 reaches x̂ = (z − σ·ε̃)/α multiplied by 1/α ≈ e^10 and the
    samples explode (the images avoid this by clipping x̂ to the data range)."""

    def __init__(self, num_classes: int, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        from guidediff.nets.layers import LamClassEmbedding

        require(num_classes >= 2, f"a noisy classifier needs at least 2 classes, got {num_classes}")
        self.num_classes, self.dim, self.hidden, self.depth, self.emb_dim = num_classes, dim, hidden, depth, emb_dim
        self.embed = LamClassEmbedding(emb_dim, emb_dim, 0)
        self.inp = nn.Linear(dim, hidden)
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        emb = F.silu(self.embed(lam))
        alpha = torch.sigmoid(lam.to(z.dtype)).sqrt()[:, None]
        h = self.inp((alpha * z).to(self.inp.weight.dtype))
        for proj, layer in zip(self.emb_proj, self.layers):
            h = layer(F.silu(h + proj(emb)))
        return self.out(F.silu(h)).to(torch.promote_types(z.dtype, torch.float32))

    def log_prob(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log p_φ(c | z_λ) [B]."""
        return torch.log_softmax(self.forward(z, lam), dim=1).gather(1, c.long()[:, None])[:, 0]

    def config_dict(self) -> dict:
        return {"num_classes": self.num_classes, "dim": self.dim, "hidden": self.hidden, "depth": self.depth,
                "emb_dim": self.emb_dim}
