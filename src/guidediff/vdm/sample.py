"""Sampling a VDM with the common samplers, on the grid of its own (possibly learned) schedule,
optionally with classifier-free guidance (the model was trained with condition dropout)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from guidediff.guidance import cfg
from guidediff.samplers import sample
from guidediff.schedules import lam_grid


@torch.no_grad()
def sample_vdm(
    model,
    c: Tensor,
    *,
    w: float = 0.0,
    steps: int = 100,
    sampler: str = "ddim",
    seed: int = 0,
    **options,
) -> Tensor:
    """Images x [B, C, H, W] in [−1, 1] for labels c [B] (the null token for an unconditional
    draw). The λ grid comes from the model's schedule (``lam_grid`` works on a LearnedSchedule);
    w is the CFG weight (ε̃ = (1+w)ε(z,c) − wε(z,∅)). z_1 ~ N(0, I) from a CPU generator."""
    cfg_u = model.unet.config
    device = next(model.parameters()).device
    shape = (c.shape[0], cfg_u.in_channels, cfg_u.image_size, cfg_u.image_size)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g).to(device)
    lams = lam_grid(model.schedule, steps, device=device).detach()
    denoiser = model.denoiser
    if model.num_classes:
        denoiser = cfg(denoiser, w, model.num_classes)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    options.setdefault("clip_x", 1.0)  # see samplers.predict
    x = sample(denoiser, z, lams, c.to(device), sampler=sampler, generator=gen, **options)
    # z at λ_max is α_0·x + σ_0·ε: rescale by α_0 to land on the data scale.
    alpha_0 = torch.sigmoid(lams[-1]).sqrt()
    return (x / alpha_0).clamp(-1.0, 1.0)


def vdm_sample_fn(steps: int = 100, per_class: int = 8, max_classes: int = 10, w: float = 0.0):
    """A ``sample_fn`` for guidediff.train: a grid (rows = classes) from the EMA model."""
    from guidediff.data.images import to_uint8
    from guidediff.images import save_grid

    def sample_fn(ema_model, step: int, out_dir: Path) -> None:
        k = min(ema_model.num_classes, max_classes)
        rows = max(k, 1)
        c = torch.arange(rows).repeat_interleave(per_class) if k else torch.zeros(per_class, dtype=torch.long)
        x = sample_vdm(ema_model, c, w=w, steps=steps, seed=step)
        save_grid(Path(out_dir) / f"step{step:07d}_vdm_w{w:g}.png", to_uint8(x), rows, per_class)

    return sample_fn
