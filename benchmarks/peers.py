"""The peer a user would otherwise pick: diffusers' UNet2DModel with class embeddings, configured
as its users do for class-conditional CFG, sized to our UNet's parameter count."""

from __future__ import annotations

import torch


def diffusers_unet(target_params: int, image_size: int = 28, channels: int = 1, num_classes: int = 10):
    """A diffusers UNet2DModel (3 levels, attention at the two lower ones, num_class_embeds =
    classes + 1 for the null label) whose width is chosen to match target_params within 10%."""
    from diffusers import UNet2DModel

    best = None
    for widths in [(64, 128, 128), (96, 128, 128), (64, 128, 192), (96, 128, 192), (96, 192, 192), (128, 192, 192), (128, 256, 256)]:
        model = UNet2DModel(
            sample_size=image_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=widths,
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            num_class_embeds=num_classes + 1,
            norm_num_groups=32,
            attention_head_dim=64,
        )
        params = sum(p.numel() for p in model.parameters())
        gap = abs(params - target_params) / target_params
        if best is None or gap < best[0]:
            best = (gap, widths, model, params)
    gap, widths, model, params = best
    if gap > 0.10:
        raise RuntimeError(f"no diffusers width within 10% of {target_params} parameters (best {params})")
    return model, {"block_out_channels": list(widths), "params": params}


def diffusers_cfg_sample(unet, scheduler, x, labels, null_label: int, guidance_scale: float, dtype):
    """The usual diffusers CFG loop: cat cond/uncond, one UNet call, combine, scheduler.step.
    ``guidance_scale`` is diffusers' s = 1 + w."""
    for t in scheduler.timesteps:
        inp = torch.cat([x, x]).to(dtype)
        cls = torch.cat([labels, torch.full_like(labels, null_label)])
        eps = unet(inp, t, class_labels=cls).sample.float()
        eps_cond, eps_uncond = eps.chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x).prev_sample
    return x
