"""Classifier-free guidance as in the CFG paper (Ho & Salimans 2022, eq. 6)."""

from guidediff.guidance.registry import register_guidance
from guidediff.guidance.wrappers import cfg


@register_guidance("cfg", help="classifier-free guidance: eps = (1+w)*eps(z,c) - w*eps(z,null)", cheap_at=(0.0, -1.0))
def build(denoiser, w, null_class, context):
    return cfg(denoiser, w, null_class)
