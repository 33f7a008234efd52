"""A guidance-weight-conditioned MLP denoiser ε̂ = net(z, λ, c, w), the student of guidance
distillation (Meng et al. 2023, "On distillation of guided diffusion models", stage one).

The (λ, c) embedding is the library's ``LamClassEmbedding``; w gets its own sinusoidal features
through a small MLP, added to it (the paper conditions its student on a Fourier embedding of w).
As in ``nets.mlp``, the head predicts v and the net returns ε̂ = σ_λ·z + α_λ·v̂, which keeps the
ε error bounded at low SNR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from guidediff.diffusion import v_to_eps
from guidediff.nets.layers import LamClassEmbedding, lam_features

# w ∈ [0, ~10]: scale the phases so the sinusoid frequencies resolve steps of about 0.1 in w.
W_SCALE = 10.0


@dataclass(frozen=True)
class WConditionedConfig:
    num_classes: int
    dim: int = 2
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 64

    def to_json(self) -> dict:
        return asdict(self)


class WConditionedMLP(nn.Module):
    """ε̂ = net(z [B, dim], λ [B], c [B], w [B]); c = num_classes is the null token."""

    def __init__(self, config: WConditionedConfig):
        super().__init__()
        self.config = config
        self.embed = LamClassEmbedding(config.emb_dim, config.emb_dim, config.num_classes)
        self.w_embed = nn.Sequential(nn.Linear(config.emb_dim, config.emb_dim), nn.SiLU(), nn.Linear(config.emb_dim, config.emb_dim))
        self.inp = nn.Linear(config.dim, config.hidden)
        self.emb_proj = nn.ModuleList(nn.Linear(config.emb_dim, config.hidden) for _ in range(config.depth))
        self.layers = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.depth))
        self.out = nn.Linear(config.hidden, config.dim)
        self.act = nn.SiLU()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, z: Tensor, lam: Tensor, c: Tensor, w: Tensor) -> Tensor:
        dtype = self.inp.weight.dtype
        w = torch.as_tensor(w, dtype=lam.dtype, device=lam.device).expand(z.shape[0])
        w_feats = lam_features(w, self.config.emb_dim, scale=W_SCALE).to(dtype)
        emb = self.act(self.embed(lam, c) + self.w_embed(w_feats))
        h = self.inp(z.to(dtype))
        for proj, layer in zip(self.emb_proj, self.layers):
            h = layer(self.act(h + proj(emb)))
        return v_to_eps(z, self.out(self.act(h)).to(z.dtype), lam)
