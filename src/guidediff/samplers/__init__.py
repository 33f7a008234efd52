"""Samplers: plain functions over a denoiser ``denoiser(z, lam, c) -> eps_hat`` and a grid of λ.

``lams`` holds steps + 1 increasing log-SNRs (from ``schedules.lam_grid``); each step evaluates
the denoiser once at lams[i] and moves z to lams[i+1]. Samplers know nothing about guidance.

Each module of this package registers its sampler(s) in ``registry.SAMPLERS`` when imported; this
file imports every module, so a new sampler is one new file (docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import Tensor

from guidediff.samplers.common import Denoiser, MeanShift, check_grid, predict
from guidediff.samplers.registry import SAMPLERS, Option, SamplerSpec, get_sampler, register_sampler

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from guidediff.samplers.ancestral import sample_ancestral  # noqa: E402
from guidediff.samplers.ddim import sample_ddim  # noqa: E402


def sample(
    denoiser: Denoiser,
    z: Tensor,
    lams: Tensor,
    c: Tensor,
    *,
    sampler: str = "ddim",
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options,
) -> Tensor:
    """Run the sampler registered as ``sampler`` with its ``options`` (an unknown option is an
    error that lists the sampler's options)."""
    spec = get_sampler(sampler)
    return spec.fn(denoiser, z, lams, c, generator=generator, progress=progress, **spec.resolve(options))


__all__ = ["SAMPLERS", "Denoiser", "MeanShift", "Option", "SamplerSpec", "check_grid", "get_sampler", "predict",
           "register_sampler", "sample", "sample_ancestral", "sample_ddim"]
