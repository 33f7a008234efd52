"""A guidance-weight-conditioned MLP denoiser ε̂ = net(z, λ, c, w), the student of guidance
distillation (Meng et al. 2023, "On distillation of guided diffusion models", stage one).

The (λ, c) embedding is the library's ``LamClassEmbedding``; w gets its own sinusoidal features
through a small MLP, added to it (the paper conditions its student on a Fourier embedding of w).
As in ``nets.mlp``, the head predicts v and the net returns ε̂ = σ_λ·z + α_λ·v̂, which keeps the
ε error bounded at low SNR.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from guidediff.nets.layers import lam_features
from guidediff.nets.mlp import MLPConfig, MLPDenoiser

# w ∈ [0, ~10]: scale the phases so the sinusoid frequencies resolve steps of about 0.1 in w.
W_SCALE = 10.0


# The student is the 2-D MLP denoiser with one more condition.
WConditionedConfig = MLPConfig


class WConditionedMLP(MLPDenoiser):
    """ε̂ = net(z [B, dim], λ [B], c [B], w [B]); c = num_classes is the null token."""

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        d = config.emb_dim
        self.w_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, z: Tensor, lam: Tensor, c: Tensor, w: Tensor) -> Tensor:
        w = torch.as_tensor(w, dtype=lam.dtype, device=lam.device).expand(z.shape[0])
        w_feats = lam_features(w, self.config.emb_dim, scale=W_SCALE).to(self.inp.weight.dtype)
        return super().forward(z, lam, c, extra_emb=self.w_embed(w_feats))
