"""CFG applied only on an interval of noise levels (Kynkäänniemi et al. 2024)."""

from guidediff.errors import require
from guidediff.guidance.registry import register_guidance
from guidediff.guidance.wrappers import cfg_interval
from guidediff.options import Option


@register_guidance("interval", help="CFG only for lam_lo <= lambda <= lam_hi, plain conditional elsewhere", options=(
    Option("lam_lo", float, None, "the lowest log-SNR that is guided"),
    Option("lam_hi", float, None, "the highest log-SNR that is guided"),
))
def build(denoiser, w, null_class, context, *, lam_lo, lam_hi):
    require(lam_lo is not None and lam_hi is not None,
            "guidance interval needs lam_lo and lam_hi (the guided log-SNR range), e.g. -4 and 4")
    return cfg_interval(denoiser, w, null_class, lam_lo, lam_hi)
