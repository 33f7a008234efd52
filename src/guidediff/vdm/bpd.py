"""Bits/dim of a data set under a VDM: per-image bound values, their mean and a 95% interval.

Each image gets one unbiased estimate of its bound (one time u, one ε for the diffusion term, one
ε_0 for the reconstruction term), so the per-image values scatter by the Monte-Carlo noise as well
as by the images; the interval mean ± 1.96·std/√N covers both.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from guidediff.errors import require
from guidediff.vdm.bound import LN2, vlb_terms


@dataclass
class BpdResult:
    """Bits/dim with a 95% confidence half-width, and each term's share (bits/dim)."""

    n: int
    dims: int
    bpd: float
    bpd_ci95: float
    bpd_std: float
    terms: dict[str, dict[str, float]] = field(default_factory=dict)
    per_image: Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "dims": self.dims, "bpd": self.bpd, "bpd_ci95": self.bpd_ci95,
                "bpd_std": self.bpd_std, "terms": self.terms}

    def table(self) -> str:
        lines = [f"bits/dim: {self.bpd:.4f} ± {self.bpd_ci95:.4f} (95% CI, N = {self.n}, D = {self.dims})"]
        for name, t in self.terms.items():
            lines.append(f"  {name:<15s} {t['bpd']:.4f} ± {t['ci95']:.4f}")
        return "\n".join(lines)


def mean_ci95(values: Tensor) -> tuple[float, float, float]:
    """(mean, 1.96·std/√N, std) of a 1-D tensor of per-item values (std with N − 1)."""
    values = values.double()
    n = values.numel()
    std = float(values.std(unbiased=True)) if n > 1 else float("nan")
    return float(values.mean()), 1.96 * std / math.sqrt(n) if n > 1 else float("nan"), std


@torch.no_grad()
def evaluate_bpd(
    model,
    x: Tensor,
    c: Tensor | None = None,
    *,
    batch_size: int = 500,
    seed: int = 0,
    T: int | None = None,
    condition: str = "label",
    bf16: bool | None = None,
    progress: bool = False,
    schedule=None,
) -> BpdResult:
    """The bound of every image of x [N, C, H, W] (float in [−1, 1] on the 8-bit grid) under a
    VDMModel, in bits/dim. The noise (u, ε, ε_0) is drawn for all N images up front from a CPU
    generator seeded with `seed`, so the result does not depend on batch_size or the device.

    c: labels [N]; condition 'label' evaluates log p(x|c), 'null' the unconditional log p(x)
    (the null token), ignored by an unconditional model. T: None uses the model's timesteps
    (0 = continuous time). bf16: autocast the denoiser on CUDA (None: on when x is on CUDA).

    schedule: evaluate the continuous-time bound with u uniform on *this* schedule instead of the
    model's, i.e. λ drawn from its density (importance sampling over λ, ``vdm.variance.
    pilot_importance_schedule``). It must have the model's endpoints: the expectation is then the
    same (VDM eq. 20), only the variance changes."""
    require(condition in ("label", "null"), f"condition must be 'label' or 'null', got {condition!r}")
    require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    require(n >= 1, "no images to evaluate; pass at least one")
    device = x.device
    num_classes = model.num_classes
    if c is None or condition == "null" or num_classes == 0:
        c = torch.full((n,), num_classes, dtype=torch.long, device=device)
    require(c.shape == (n,), f"{n} images but {tuple(c.shape)} labels; pass one label per image")
    T = model.vdm.timesteps if T is None else T
    if schedule is not None:
        require(T == 0, f"importance sampling over λ is for the continuous-time bound; T = {T} is discrete: "
                        "evaluate it with the model's schedule")
        ends, own = (schedule.lam_max, schedule.lam_min), (float(model.schedule.lam_max), float(model.schedule.lam_min))
        require(all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(ends, own)),
                f"the importance schedule's endpoints {ends} differ from the model's {own}; the bound would change")

    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g)
    eps_0 = torch.randn(x.shape, generator=g)
    if bf16 is None:
        bf16 = device.type == "cuda"
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 and device.type == "cuda"
                else contextlib.nullcontext())

    model.eval()
    parts: dict[str, list[Tensor]] = {"prior": [], "reconstruction": [], "diffusion": []}
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="bits/dim", leave=False)
    for start in starts:
        sl = slice(start, min(start + batch_size, n))
        with autocast:
            if schedule is None:
                terms = model(x[sl].float(), c[sl], u[sl].to(device), eps[sl].to(device), eps_0[sl].to(device), T=T)
            else:
                terms = vlb_terms(model.denoiser, x[sl].float(), c[sl], schedule, u[sl].to(device),
                                  eps[sl].to(device), eps_0[sl].to(device), T=0)
        for name in parts:
            parts[name].append(getattr(terms, name).double().cpu())

    dims = int(x[0].numel())
    to_bpd = 1.0 / (dims * LN2)
    per_term = {name: torch.cat(v) * to_bpd for name, v in parts.items()}
    total = sum(per_term.values())
    bpd, ci, std = mean_ci95(total)
    terms = {}
    for name, values in per_term.items():
        m, h, _ = mean_ci95(values)
        terms[name] = {"bpd": m, "ci95": h}
    return BpdResult(n=n, dims=dims, bpd=bpd, bpd_ci95=ci, bpd_std=std, terms=terms, per_image=total)
