"""A small MLP denoiser for low-dimensional (2-D toy) data: ε̂ = net(z, λ, c).

The λ/class embedding is the UNet's (``layers.LamClassEmbedding``: sinusoids of λ through a small
MLP plus a class table with num_classes + 1 rows, the last one the null token ∅). Each hidden layer
receives the embedding again (added after a per-layer projection), so the time and class condition
reach the deep layers directly, as they do in the UNet's residual blocks.

Output preconditioning: the last layer predicts v (Salimans & Ho 2022) and the net returns
ε̂ = σ_λ·z + α_λ·v̂ (α, σ are functions of λ alone, no schedule involved). A raw ε-head fails at low
SNR: DDIM's first step from λ = −20 multiplies the ε error by ~α_s/α_t ≈ 350, so samples explode;
through v the error enters ε̂ scaled by α_λ and stays bounded in every step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from guidediff.diffusion import v_to_eps
from guidediff.nets.layers import LamClassEmbedding


@dataclass(frozen=True)
class MLPConfig:
    num_classes: int
    dim: int = 2
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 64
    prediction: str = "v"  # what the last layer predicts ("v" or "eps"); forward always returns ε

    def to_json(self) -> dict:
        return asdict(self)


class MLPDenoiser(nn.Module):
    """ε-prediction MLP: input z [B, dim], λ [B], class c [B] (num_classes = null), output [B, dim]."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        if config.prediction not in ("v", "eps"):
            raise ValueError(f"prediction must be 'v' or 'eps', got {config.prediction!r}")
        self.config = config
        self.embed = LamClassEmbedding(config.emb_dim, config.emb_dim, config.num_classes)
        self.inp = nn.Linear(config.dim, config.hidden)
        self.emb_proj = nn.ModuleList(nn.Linear(config.emb_dim, config.hidden) for _ in range(config.depth))
        self.layers = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.depth))
        self.out = nn.Linear(config.hidden, config.dim)
        self.act = nn.SiLU()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, z: Tensor, lam: Tensor, c: Tensor, extra_emb: Tensor | None = None) -> Tensor:
        """``extra_emb`` [B, emb_dim] is added to the (λ, c) embedding: a further condition such as
        the guidance weight of a distilled student (nets.w_conditioned)."""
        emb = self.embed(lam, c)
        emb = self.act(emb if extra_emb is None else emb + extra_emb)
        h = self.inp(z.to(self.inp.weight.dtype))
        for proj, layer in zip(self.emb_proj, self.layers):
            h = layer(self.act(h + proj(emb)))
        out = self.out(self.act(h)).to(z.dtype)
        return v_to_eps(z, out, lam) if self.config.prediction == "v" else out
