"""DDGAN generators G(x_t, z, λ_t, c) -> x̂_0 (Xiao et al. 2022, eq. 7 and App. C).

The generator predicts the clean x_0 from the noisy x_t and a latent z ~ N(0, I); the training
loop and the sampler then draw x_{t−1} from the posterior q(x_{t−1} | x_t, x̂_0). The latent is
what lets one denoising step be multimodal, which a Gaussian step cannot be.

- ``ImageGenerator``: the ADM UNet (guidediff.nets.unet) whose per-block embedding is
  emb = MLP(sinusoid(λ_t)) [+ E[c]] + mapping(z). Every ResBlock turns emb into a GroupNorm
  scale and shift, so the latent acts through adaptive GroupNorm in every block (the paper's
  "latent-controlled AdaGN"), added to the time embedding. Output tanh (images live in [−1, 1]).
- ``MLPGenerator``: for 2-D data; x_t, λ_t, z (and c) are embedded and summed, then an MLP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from guidediff.nets.layers import lam_features
from guidediff.nets.unet import UNet, UNetConfig


def pixel_norm(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """z / RMS(z) per sample (StyleGAN's mapping-network input normalisation)."""
    return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + eps)


def mapping_network(nz: int, out_dim: int, layers: int) -> nn.Sequential:
    """z -> `layers` linear layers (LeakyReLU 0.2 between them) -> a vector added to the embedding."""
    mods: list[nn.Module] = []
    d = nz
    for k in range(layers):
        mods.append(nn.Linear(d, out_dim))
        if k < layers - 1:
            mods.append(nn.LeakyReLU(0.2))
        d = out_dim
    return nn.Sequential(*mods)


class ImageGenerator(nn.Module):
    """G(x_t [B, C, H, W], z [B, nz], λ_t [B], c [B] or None) -> x̂_0 [B, C, H, W] in (−1, 1)."""

    def __init__(self, unet_config: UNetConfig, nz: int = 100, mapping_layers: int = 3, tanh: bool = True):
        super().__init__()
        self.nz = nz
        self.tanh = tanh
        self.unet = UNet(unet_config)
        self.mapping = mapping_network(nz, unet_config.emb_dim, mapping_layers)

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, lam: torch.Tensor,
                c: torch.Tensor | None = None) -> torch.Tensor:
        enc = self.unet.encoder
        emb = enc.embed(lam, c) + self.mapping(pixel_norm(z).to(enc.embed.mlp[0].weight.dtype))
        # UNet.forward with our own embedding: the UNet computes emb from (λ, c) alone.
        h = enc.input_conv(x_t)
        skips = [h]
        for block in enc.down:
            h = block(h, emb)
            skips.append(h)
        h = enc.middle(h, emb)
        for block in self.unet.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.unet.out(h)
        return (torch.tanh(out) if self.tanh else out).to(x_t.dtype)


def fourier_features(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """[x, sin(2^k·π·x), cos(2^k·π·x)] for k < num_freqs, per coordinate: [B, d] -> [B, d·(1 + 2K)].

    Plain MLPs on 2-D inputs learn fine detail slowly (spectral bias; Tancik et al. 2020); these
    features let them resolve the 25-Gaussians' 0.018-wide modes within a few thousand steps.
    """
    if num_freqs == 0:
        return x
    freqs = math.pi * 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)
    phase = (x[:, :, None] * freqs).flatten(1)
    return torch.cat([x, phase.sin(), phase.cos()], dim=1)


class MLPGenerator(nn.Module):
    """G(x_t [B, d], z [B, nz], λ_t [B], c) -> x̂_0 [B, d]: embeddings summed, then an MLP."""

    def __init__(self, dim: int = 2, nz: int = 2, hidden: int = 128, layers: int = 3, num_classes: int = 0,
                 fourier: int = 0):
        super().__init__()
        self.nz = nz
        self.fourier = fourier
        self.feature_dim = 32
        self.x_embed = nn.Linear(dim * (1 + 2 * fourier), hidden)
        self.t_embed = nn.Sequential(nn.Linear(self.feature_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.z_embed = nn.Linear(nz, hidden)
        self.class_embed = nn.Embedding(num_classes, hidden) if num_classes > 0 else None
        self.body = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, lam: torch.Tensor,
                c: torch.Tensor | None = None) -> torch.Tensor:
        t_emb = self.t_embed(lam_features(lam, self.feature_dim).to(x_t.dtype))
        h = self.x_embed(fourier_features(x_t, self.fourier)) + t_emb + self.z_embed(z)
        if self.class_embed is not None and c is not None:
            h = h + self.class_embed(c)
        for layer in self.body:
            h = layer(F.leaky_relu(h, 0.2))
        return self.out(F.leaky_relu(h, 0.2)).to(x_t.dtype)
