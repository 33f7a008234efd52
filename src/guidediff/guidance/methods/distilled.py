"""A guidance-distilled student (Meng et al. 2023): the network takes w as an input, one forward per step.
``generate`` picks this method itself for a student (``nets.w_conditioned``)."""

import torch

from guidediff.guidance.registry import register_guidance


@register_guidance("distilled", help="a distilled student that applies w itself (chosen for a student model)")
def build(denoiser, w, null_class, context):
    def guided(z, lam, c):
        weights = torch.as_tensor(w, dtype=torch.float32, device=z.device).expand(z.shape[0])
        return denoiser(z, lam, c, weights)

    return guided
