"""Seeds and devices: the small runtime facts every command shares."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from guidediff.errors import require


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a stable function of its parts, e.g. (seed, "noise", step)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or "auto": CUDA when a GPU is visible, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    require(device.type != "cuda" or torch.cuda.is_available(),
            "CUDA was asked for but no GPU is visible; use the CPU (device \"cpu\", --device cpu)")
    return device
