"""Adaptive projected guidance (Sadat et al. 2024, Algorithm 1)."""

from guidediff.guidance.registry import register_guidance
from guidediff.guidance.wrappers import APG
from guidediff.options import Option


@register_guidance("apg", help="adaptive projected guidance: the update's parallel part down-weighted", options=(
    Option("eta", float, 0.0, "weight of the parallel part (1: plain CFG)"),
    Option("momentum", float, 0.0, "momentum beta over the steps (the paper uses -0.5)"),
    Option("norm_threshold", float, None, "norm threshold r of the update (None: none)",
           check=lambda v: None if v > 0 else f"must be > 0 (or None), got {v}"),
))
def build(denoiser, w, null_class, context, *, eta, momentum, norm_threshold):
    return APG(denoiser, w, null_class, eta=eta, momentum=momentum, norm_threshold=norm_threshold)
