"""Guidance-weight-conditioned denoisers ε̂ = net(z, λ, c, w), the students of guidance
distillation (Meng et al. 2023, "On distillation of guided diffusion models", stage one): a 2-D
MLP and an image UNet.

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
from guidediff.nets.unet import UNet, UNetConfig

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


class WConditionedUNet(UNet):
    """The image student: the UNet with sinusoidal features of w, through an MLP whose last layer
    starts at zero, added to its (λ, c) embedding. Loaded with a teacher's weights
    (``from_teacher``) it starts out as the teacher's conditional prediction, whatever w."""

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        d = config.emb_dim
        self.w_embed = nn.Sequential(nn.Linear(config.base_channels, d), nn.SiLU(), nn.Linear(d, d))
        nn.init.zeros_(self.w_embed[-1].weight)
        nn.init.zeros_(self.w_embed[-1].bias)

    @classmethod
    def from_teacher(cls, teacher: UNet) -> "WConditionedUNet":
        student = cls(teacher.config)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("w_embed.") for k in missing), (missing, unexpected)
        return student

    def forward(self, z: Tensor, lam: Tensor, c: Tensor, w: Tensor) -> Tensor:
        w = torch.as_tensor(w, dtype=lam.dtype, device=lam.device).expand(z.shape[0])
        w_feats = lam_features(w, self.config.base_channels, scale=W_SCALE).to(self.w_embed[0].weight.dtype)
        return super().forward(z, lam, c, extra_emb=self.w_embed(w_feats))

