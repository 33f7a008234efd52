"""Guidance: pure wrappers that take a denoiser and return a denoiser (``wrappers``), and the
registry of guidance methods built from them (``registry``; one file per method in ``methods/``).

A denoiser is any callable ``denoiser(z, lam, c) -> eps_hat``. Guidance knows nothing about samplers.
w follows the CFG paper: ε̃ = (1+w)·ε(z,c) − w·ε(z,∅) (diffusers' ``guidance_scale`` is s = 1 + w).
"""

from __future__ import annotations

from guidediff.guidance.registry import (
    GUIDANCE,
    GuidanceContext,
    Guided,
    GuidanceSpec,
    get_guidance,
    register_guidance,
)
from guidediff.guidance.wrappers import (
    APG,
    CountingDenoiser,
    Denoiser,
    GradLogProb,
    apg,
    autoguidance,
    cfg,
    cfg_interval,
    cfg_rescale,
    classifier_gradient,
    classifier_guidance,
    classifier_mean_shift,
    unconditional,
)
from guidediff.guidance import methods  # noqa: E402,F401  (registers the built-in methods)

__all__ = ["APG", "GUIDANCE", "CountingDenoiser", "Denoiser", "GradLogProb", "GuidanceContext", "GuidanceSpec",
           "Guided", "apg", "autoguidance", "cfg", "cfg_interval", "cfg_rescale", "classifier_gradient",
           "classifier_guidance", "classifier_mean_shift", "get_guidance", "register_guidance", "unconditional"]
