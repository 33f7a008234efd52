"""Moving averages of a network's weights, the model that is sampled from: the classic
exponential one (fixed decay with warm-up) or EDM2's power-function EMA, whose length is a fixed
fraction σ_rel of the training so far."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """Decay for update number ``step`` (0-based): min(decay, (1 + n)/(10 + n)) with warm-up.

    The warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates) keeps early,
    random weights from dominating: after n updates the average spans about n/9 steps, so a
    20k-step run with decay 0.9999 effectively averages its last ~2k steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


SIGMA_REL_MAX = math.sqrt(1 / 12)  # σ_rel of γ = 0, the longest power EMA (the plain average)


def gamma_label(gamma: float) -> str:
    """A power EMA's γ as it names the profile's snapshot files: 4 decimals, so two profiles whose
    labels agree cannot both be stored."""
    return f"{gamma:.4f}"


def power_gamma(sigma_rel: float) -> float:
    """γ of the power-function EMA with relative standard deviation σ_rel (Karras et al. 2024,
    EDM2, eq. 3): solves σ_rel² = (γ+1)/((γ+2)²(γ+3)), which decreases in γ (bisection)."""
    if not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}), got {sigma_rel}")

    def rel(g: float) -> float:
        return math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))

    lo, hi = 0.0, 1.0
    while rel(hi) > sigma_rel:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rel(mid) > sigma_rel else (lo, mid)
    return 0.5 * (lo + hi)


def power_decay(step: int, gamma: float) -> float:
    """Decay β = (1 − 1/t)^{γ+1} for update number ``step`` (0-based, t = step + 1) (EDM2, eq. 2 in
    discrete form): the average weights step τ ∝ τ^γ, so it spans a fixed fraction of training."""
    t = step + 1
    return (1.0 - 1.0 / t) ** (gamma + 1)


class EMA:
    """A shadow copy of a module whose parameters track θ_ema ← d·θ_ema + (1 − d)·θ.

    Buffers are copied as they are. The shadow is a full module (eval mode, no grads), so it can be
    sampled from directly. Kept on the main process only; all ranks hold the same θ under DDP.
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True,
                 sigma_rel: float | None = None):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        # sigma_rel set: EDM2's power-function profile instead of the fixed decay
        self.sigma_rel = None if sigma_rel is None else float(sigma_rel)
        self.gamma = None if sigma_rel is None else power_gamma(self.sigma_rel)
        self.num_updates = 0
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self._shadow = [p for p in self.module.parameters()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        if self.gamma is not None:
            d = power_decay(self.num_updates, self.gamma)
        else:
            d = ema_decay(self.num_updates, self.decay, self.warmup)
        params = [p.detach() for p in module.parameters()]
        # lerp(a, b, t) = a + t·(b − a) = d·a + (1 − d)·b for t = 1 − d.
        torch._foreach_lerp_(self._shadow, params, 1.0 - d)
        for mine, theirs in zip(self.module.buffers(), module.buffers()):
            mine.copy_(theirs)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def meta(self) -> dict:
        """JSON-able counters that go with the weights in a checkpoint."""
        meta = {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}
        if self.sigma_rel is not None:
            meta["sigma_rel"] = self.sigma_rel
        return meta

    def load_meta(self, meta: dict) -> None:
        self.num_updates = int(meta["num_updates"])


def ema_from_config(module: nn.Module, train_config) -> EMA:
    """The EMA a TrainConfig asks for: ``ema = "exp"`` (decay, warm-up) or "power" (σ_rel)."""
    t = train_config
    kind = getattr(t, "ema", "exp")
    if kind not in ("exp", "power"):
        raise ValueError(f"unknown EMA kind {kind!r}; choose exp or power")
    return EMA(module, t.ema_decay, t.ema_warmup, sigma_rel=t.ema_sigma_rel if kind == "power" else None)
