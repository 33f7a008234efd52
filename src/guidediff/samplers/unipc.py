"""UniPC-bh2 of order 2 with its corrector UniC, data prediction (Zhao et al. 2023, "UniPC", Alg. 2–3).

DPM-Solver's (and UniPC's) λ is log(α/σ), half of ours: h = (λ_s − λ_t)/2 below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from guidediff.samplers import common
from guidediff.samplers.registry import register_sampler
from guidediff.schedules import alpha_sigma


def unic_weights(h: Tensor, r: Tensor) -> Tensor:
    """UniC's ρ for order 2 with B(h) = e^{−h} − 1 (UniPC, bh2): solve R·ρ = b with
    R = [[1, 1], [r, 1]] and b_k = k!·φ_{k+1}(−h)/B(h), φ_{k+1}(x) = (φ_k(x) − 1/k!)/x, φ_1 = e^x − 1."""
    hh = -h
    phi = torch.expm1(hh) / hh - 1.0
    b0 = phi / torch.expm1(hh)
    b1 = 2.0 * (phi / hh - 0.5) / torch.expm1(hh)
    # the 2x2 system in closed form (r < 0, so 1 − r > 0): no linear-algebra call that syncs the GPU
    return torch.stack([(b0 - b1) / (1.0 - r), (b1 - r * b0) / (1.0 - r)])


@register_sampler("unipc", help="UniPC-bh2: order-2 predictor with its free corrector, one evaluation per step",
                  options=(common.LOWER_ORDER_FINAL, common.CLIP_X, common.THRESHOLD))
def sample_unipc(
    denoiser: common.Denoiser,
    z: Tensor,
    lams: Tensor,
    c: Tensor,
    *,
    lower_order_final: bool = True,
    clip_x: float | None = None,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """UniPC-2 (bh2): predictor UniP-2
    z_s = (σ_s/σ_t)·z_t + α_s(1 − e^{−h})·x̂_t − α_s·B(h)·½·D_1, D_1 = (x̂_{t−1} − x̂_t)/r, r = h_{−1}/h,
    then, once x̂_s has been evaluated at that z_s for the next step, the corrector UniC replaces z_s by
    (σ_s/σ_t)·z_t + α_s(1 − e^{−h})·x̂_t − α_s·B(h)·(ρ_1·D_1 + ρ_2·(x̂_s − x̂_t)) — reusing x̂_s, so the
    corrector costs no evaluation (one per step, N in all). The first step (and, with
    ``lower_order_final``, the last) predicts at order 1; a first-order predictor is corrected with
    ρ = ½. No corrector after the last step: that would need an evaluation at the clean end."""
    common.check_grid(lams)
    steps = len(lams) - 1
    x_prev = None
    pending = None  # the last predictor's (z_t, x̂_t, λ_t, λ_s, r, D_1) for the corrector
    for i in common.steps_range(steps, progress):
        lam_t, lam_s = lams[i], lams[i + 1]
        x, _ = common.predict(denoiser, z, lam_t, c, clip_x, threshold)
        if pending is not None:
            z_t, x_t, lam_a, lam_b, r, d1 = pending
            h = 0.5 * (lam_b - lam_a)
            alpha, _ = alpha_sigma(lam_b)
            if d1 is None:
                corr = 0.5 * (x - x_t)
            else:
                rho = unic_weights(h, r)
                corr = rho[0] * d1 + rho[1] * (x - x_t)
            z = common.data_step(z_t, x_t, lam_a, lam_b) - alpha * torch.expm1(-h) * corr
        order2 = x_prev is not None and not (lower_order_final and i == steps - 1)
        z_next = common.data_step(z, x, lam_t, lam_s)
        r = d1 = None
        if order2:
            r = (lams[i - 1] - lam_t) / (lam_s - lam_t)
            d1 = (x_prev - x) / r
            alpha_s, _ = alpha_sigma(lam_s)
            z_next = z_next - alpha_s * torch.expm1(-0.5 * (lam_s - lam_t)) * 0.5 * d1
        pending = (z, x, lam_t, lam_s, r, d1)
        x_prev, z = x, z_next
    return z
