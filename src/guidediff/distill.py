"""Guidance distillation, stage one (Meng et al. 2023, "On distillation of guided diffusion
models", eq. 6): a student ε̂_η(z, λ, c, w) conditioned on the guidance weight learns the teacher's
CFG prediction ε̃_w = (1+w)·ε(z,c) − w·ε(z,∅), so sampling then costs one forward per step
instead of two.

A *w-conditioned denoiser* is any callable ``(z, lam, c, w) -> eps_hat`` with w [B];
``with_weight`` fixes w and returns an ordinary denoiser for the samplers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from guidediff import guidance
from guidediff.diffusion import q_sample
from guidediff.errors import require

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
WConditionedDenoiser = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def guided_teacher(denoiser: Denoiser, null_class: int) -> WConditionedDenoiser:
    """The teacher as a w-conditioned denoiser: ``guidance.cfg(denoiser, w, null_class)`` with one w per sample."""

    def teacher(z: Tensor, lam: Tensor, c: Tensor, w: Tensor) -> Tensor:
        return guidance.cfg(denoiser, torch.as_tensor(w, dtype=z.dtype, device=z.device), null_class)(z, lam, c)

    return teacher


def with_weight(student: WConditionedDenoiser, w: float | Tensor) -> Denoiser:
    """A w-conditioned denoiser at a fixed weight, usable by every sampler (one forward per step)."""

    def denoiser(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        weight = torch.as_tensor(w, dtype=lam.dtype, device=lam.device).expand(z.shape[0])
        return student(z, lam, c, weight)

    return denoiser


def distill_loss(
    student: WConditionedDenoiser,
    teacher_guided_eps: Tensor | WConditionedDenoiser,
    z: Tensor,
    lam: Tensor,
    c: Tensor,
    w: Tensor,
) -> Tensor:
    """Meng et al. eq. (6) in ε-form: mean over the batch of ‖ε̂_η(z,λ,c,w) − ε̃_w(z,λ,c)‖².

    ``teacher_guided_eps`` is the teacher's guided prediction (a tensor like z) or a w-conditioned
    teacher (e.g. ``guided_teacher``) evaluated here without gradients.
    """
    if callable(teacher_guided_eps):
        with torch.no_grad():
            target = teacher_guided_eps(z, lam, c, w)
    else:
        target = teacher_guided_eps
    require(target.shape == z.shape, f"teacher prediction shape {list(target.shape)} must match z {list(z.shape)}")
    pred = student(z, lam, c, w)
    return (pred - target.detach()).pow(2).flatten(1).sum(1).mean()


def distill_batch(
    sample_data: Callable[[int, torch.Generator], tuple[Tensor, Tensor]],
    n: int,
    *,
    w_range: tuple[float, float],
    lam_range: tuple[float, float],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A training batch (z, λ, c, w): x, c from ``sample_data(n, generator)``, λ and w uniform in
    their ranges, z = α·x + σ·ε."""
    x, c = sample_data(n, generator)
    u = torch.rand(n, generator=generator, dtype=x.dtype)
    lam = lam_range[0] + (lam_range[1] - lam_range[0]) * u
    w = w_range[0] + (w_range[1] - w_range[0]) * torch.rand(n, generator=generator, dtype=x.dtype)
    z = q_sample(x, lam, torch.randn(x.shape, generator=generator, dtype=x.dtype))
    return z, lam, c, w


def train_student(
    student: torch.nn.Module,
    teacher: WConditionedDenoiser,
    sample_data: Callable[[int, torch.Generator], tuple[Tensor, Tensor]],
    *,
    steps: int = 2000,
    batch: int = 512,
    lr: float = 2e-3,
    w_range: tuple[float, float] = (0.0, 4.0),
    lam_range: tuple[float, float] = (-20.0, 20.0),
    seed: int = 0,
) -> list[float]:
    """Stage-one guidance distillation by Adam with a cosine-decayed rate; returns the loss per step.
    Small by design (2-D toys): the teacher is called once per batch, no replay buffer."""
    require(steps >= 1 and batch >= 1, "distillation needs steps >= 1 and batch >= 1")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        z, lam, c, w = distill_batch(sample_data, batch, w_range=w_range, lam_range=lam_range, generator=gen)
        loss = distill_loss(student, teacher, z, lam, c, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def distill_images(
    student: torch.nn.Module,
    teacher: Denoiser,
    images: Tensor,
    labels: Tensor,
    lam_of_u: Callable[[Tensor], Tensor],
    null_class: int,
    *,
    steps: int,
    seconds: float | None = None,
    batch: int = 128,
    lr: float = 5e-5,
    w_range: tuple[float, float] = (0.0, 4.0),
    bf16: bool = False,
    seed: int = 0,
    student_denoiser: WConditionedDenoiser | None = None,
) -> list[float]:
    """Stage-one distillation on images: x, c from (``images`` in [−1, 1], ``labels``) on the
    student's device, λ = ``lam_of_u``(u) with u ~ U(0, 1) (the schedule the samplers walk),
    w ~ U(w_range), target the teacher's CFG prediction. Adam at a constant rate (the student
    starts from the teacher's weights, see ``nets.w_conditioned.WConditionedUNet.from_teacher``);
    stops after ``steps`` or ``seconds``. Returns the loss per step.

    ``student_denoiser`` is the student's ε̂(z, λ, c, w) where that is not the module itself: the
    student of a preconditioned ``teacher`` sits in the same preconditioning
    (``precondition.wrap_for_config(student, config.diffusion)``, as ``distill_model`` does)."""
    import time

    require(steps >= 1 and batch >= 1, "distillation needs steps >= 1 and batch >= 1")
    device = images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    target_of = guided_teacher(teacher, null_class)
    predict = student if student_denoiser is None else student_denoiser
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    losses, start = [], time.perf_counter()
    student.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), device=device, generator=gen)
        x, c = images[idx], labels[idx]
        lam = lam_of_u(torch.rand(batch, device=device, generator=gen))
        w = w_range[0] + (w_range[1] - w_range[0]) * torch.rand(batch, device=device, generator=gen)
        z = q_sample(x, lam, torch.randn(x.shape, device=device, generator=gen))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = distill_loss(lambda *a: predict(*a).float(), target_of, z, lam, c, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if seconds is not None and time.perf_counter() - start > seconds:
            break
    student.eval()
    return [float(v) for v in losses]


def check_teacher(config) -> None:
    """What a teacher must be for ``distill_model``: checked before any data is loaded. Its
    schedule (shift included) and preconditioning travel in the config the student is saved with."""
    require(config.model.num_classes > 0 and config.diffusion.p_uncond > 0,
            "the teacher must be a class-conditional model trained with condition dropout (p_uncond > 0)")


def distill_model(
    teacher_net: torch.nn.Module,
    config,
    images: Tensor,
    labels: Tensor,
    **options,
) -> tuple[torch.nn.Module, list[float]]:
    """A CFG model (UNet ``teacher_net`` with its Config) distilled into a
    ``WConditionedUNet`` started from its weights: λ from the model's own schedule, bf16 on CUDA,
    images uint8 [N, H, W, C] and labels on the teacher's device. ``options`` go to
    ``distill_images`` (steps, seconds, batch, lr, w_range, seed). A preconditioned teacher
    (diffusion.precondition = "edm") has the student's raw net learn inside the same
    preconditioning, so the student saved with ``config`` samples like the teacher.
    Returns (student in eval mode, losses)."""
    from guidediff.nets.w_conditioned import WConditionedUNet
    from guidediff.precondition import wrap_for_config
    from guidediff.schedules import schedule_from_config

    check_teacher(config)
    device = next(teacher_net.parameters()).device
    bf16 = device.type == "cuda"
    teacher_eps = wrap_for_config(teacher_net, config.diffusion)

    def teacher(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return teacher_eps(z, lam, c).float()

    x = images.to(device).float().div(127.5).sub(1).permute(0, 3, 1, 2).contiguous()
    student = WConditionedUNet.from_teacher(teacher_net).to(device).requires_grad_(True)
    d = config.diffusion
    lam_of_u = schedule_from_config(d).lam
    losses = distill_images(student, teacher, x, labels.to(device).long(), lam_of_u, config.model.num_classes,
                            bf16=bf16, student_denoiser=wrap_for_config(student, d), **options)
    return student.requires_grad_(False), losses
