"""Learning-rate multipliers as pure functions of the step: linear warm-up, then constant
(the CFG recipe), cosine or linear decay to a fraction of the peak rate."""

from __future__ import annotations

import math
from typing import Callable

import torch

from guidediff.errors import require

DECAYS = ("constant", "cosine", "linear")


def lr_factor(step: int, *, warmup: int, total: int, decay: str = "constant", final: float = 0.1) -> float:
    """Multiplier of the peak rate for optimizer step ``step`` (0-based): min(1, (step+1)/warmup)
    during warm-up; afterwards 1 ("constant"), or from 1 down to ``final`` at step ``total`` along
    a half cosine (Loshchilov & Hutter 2017, SGDR eq. 5) or a straight line, ``final`` after it."""
    if warmup > 0 and step + 1 < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)
    span = max(total - warmup, 1)
    p = min(max((step + 1 - warmup) / span, 0.0), 1.0)
    if decay == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    if decay == "linear":
        return 1.0 - (1.0 - final) * p
    raise ValueError(f"unknown lr decay {decay!r}; choose one of {', '.join(DECAYS)}")


def lr_lambda(train_config) -> Callable[[int], float]:
    """The multiplier function for torch.optim.lr_scheduler.LambdaLR from a TrainConfig."""
    t = train_config
    decay = getattr(t, "lr_schedule", "constant")
    require(decay in DECAYS, f"train.lr_schedule {decay!r} is unknown; choose one of {', '.join(DECAYS)}")
    warmup, total, final = t.warmup_steps, t.steps, getattr(t, "lr_final", 0.1)

    def factor(step: int) -> float:
        return lr_factor(step, warmup=warmup, total=total, decay=decay, final=final)

    return factor


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Every parameter group's rate to ``value``. A rate kept as a device tensor (capturable Adam,
    read by a captured CUDA graph) is filled in place, so the graph sees the new value."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
