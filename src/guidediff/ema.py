"""Exponential moving average of a network's weights, the model that is sampled from."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """Decay for update number ``step`` (0-based): min(decay, (1 + n)/(10 + n)) with warm-up.

    The warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates) keeps early,
    random weights from dominating: after n updates the average spans about n/9 steps, so a
    20k-step run with decay 0.9999 effectively averages its last ~2k steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EMA:
    """A shadow copy of a module whose parameters track θ_ema ← d·θ_ema + (1 − d)·θ.

    Buffers are copied as they are. The shadow is a full module (eval mode, no grads), so it can be
    sampled from directly. Kept on the main process only; all ranks hold the same θ under DDP.
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self._shadow = [p for p in self.module.parameters()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
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
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_meta(self, meta: dict) -> None:
        self.num_updates = int(meta["num_updates"])
