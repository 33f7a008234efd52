"""Classifier guidance with a noisy classifier (Dhariwal & Nichol 2021), in score or ancestral mean form."""

from guidediff.errors import UsageError, require
from guidediff.guidance.registry import Guided, register_guidance
from guidediff.guidance.wrappers import classifier_guidance, classifier_mean_shift, unconditional
from guidediff.options import Option


def check_label_set(classifier_classes: int, model_classes: int, source: str = "the classifier") -> None:
    """UsageError unless the classifier predicts exactly the diffusion model's classes: guidance
    asks p_φ(c | z) for the model's class index c, which means nothing in another label set."""
    if classifier_classes != model_classes:
        raise UsageError(
            f"{source} predicts {classifier_classes} classes but the diffusion model has {model_classes}; "
            f"train the noisy classifier on the model's dataset (same label set)")


def check_classifier(model_config, classifier) -> None:
    mc = model_config
    require(mc.num_classes > 0, "classifier guidance needs a class-conditional model's label set, but this model "
                                "is unconditional (num_classes = 0)")
    check_label_set(classifier.num_classes, mc.num_classes)
    cc = classifier.config
    require((cc.image_size, cc.in_channels) == (mc.image_size, mc.in_channels),
            f"the classifier takes {cc.in_channels}x{cc.image_size}x{cc.image_size} images but the model makes "
            f"{mc.in_channels}x{mc.image_size}x{mc.image_size}; train the classifier on the model's dataset")


@register_guidance("classifier", needs="classifier", weight="scale", check_net=check_classifier,
                   help="classifier guidance with scale s: eps - s*sigma*grad log p(c|z) (score form) or the "
                        "ancestral mean shift mu + s*Sigma*grad (mean form)", options=(
    Option("base", str, "uncond", "guide the unconditional (null-token) or the conditional prediction",
           check=lambda v: None if v in ("uncond", "cond") else f"must be uncond or cond, got {v!r}"),
    Option("cg_form", str, "score", "score (any sampler) or mean (a sampler that takes mean_shift: ancestral)",
           check=lambda v: None if v in ("score", "mean") else f"must be score or mean, got {v!r}"),
))
def build(denoiser, w, null_class, context, *, base, cg_form):
    start = unconditional(denoiser, null_class) if base == "uncond" else denoiser
    if cg_form == "mean":
        return Guided(start, {"mean_shift": classifier_mean_shift(context.grad_log_prob, w)})
    return classifier_guidance(start, context.grad_log_prob, w)
