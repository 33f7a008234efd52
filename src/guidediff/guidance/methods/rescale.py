"""CFG with the guided prediction's std rescaled (Lin et al. 2024, Sec. 3.4)."""

from guidediff.guidance.registry import register_guidance
from guidediff.guidance.wrappers import cfg_rescale
from guidediff.options import Option


@register_guidance("rescale", help="CFG rescale: the guided x-hat's std pulled back to the conditional one", options=(
    Option("phi", float, 0.7, "0 is plain CFG, 1 full rescale",
           check=lambda v: None if 0.0 <= v <= 1.0 else f"must lie in [0, 1], got {v}"),
))
def build(denoiser, w, null_class, context, *, phi):
    return cfg_rescale(denoiser, w, null_class, phi)
