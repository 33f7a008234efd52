"""Autoguidance (Karras et al. 2024): a weaker model of the same data in place of the unconditional one."""

from guidediff.errors import require
from guidediff.guidance.registry import register_guidance
from guidediff.guidance.wrappers import autoguidance


def check_guide(model_config, guide_net) -> None:
    from guidediff.nets.w_conditioned import WConditionedUNet

    require(not isinstance(guide_net, WConditionedUNet),
            "the guide model is a distilled student; autoguidance needs an ordinary (earlier or smaller) model")
    mc, gm = model_config, getattr(guide_net, "config", None)
    require(gm is None or (gm.image_size, gm.in_channels, gm.num_classes)
            == (mc.image_size, mc.in_channels, mc.num_classes),
            "the guide model must make the same images with the same label set as the model; train it "
            "on the same data (an early or smaller checkpoint of the same run)")


@register_guidance("autoguidance", help="eps + w*(eps - eps_guide) with a less-trained or smaller guide model",
                   needs="guide", check_net=check_guide)
def build(denoiser, w, null_class, context):
    return autoguidance(denoiser, context.guide, w)
