"""Guidance as pure wrappers: each takes a denoiser and returns a denoiser.

A denoiser is any callable ``denoiser(z, lam, c) -> eps_hat`` (z [B, ...], λ [B], class index c [B],
the null token being index ``num_classes``). Guidance knows nothing about samplers.

Guidance weight w follows the CFG paper: ε̃ = (1+w)·ε(z,c) − w·ε(z,∅); w = 0 is the conditional
model, w = −1 the unconditional one. (diffusers' ``guidance_scale`` is s = 1 + w.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from guidediff.diffusion import per_sample
from guidediff.errors import UsageError, require
from guidediff.schedules import alpha_sigma

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
GradLogProb = Callable[[Tensor, Tensor, Tensor], Tensor]


class CountingDenoiser:
    """Wraps a network and counts what it costs: ``calls`` (forward passes) and ``evaluations``
    (samples pushed through the network). NFE per image = evaluations / images sampled; a batched
    CFG forward of 2B rows counts 2 per image, because that is the work done."""

    def __init__(self, net: Denoiser):
        self.net = net
        self.calls = 0
        self.evaluations = 0

    def __call__(self, z: Tensor, lam: Tensor, c: Tensor, *extra: Tensor) -> Tensor:
        self.calls += 1
        self.evaluations += z.shape[0]
        return self.net(z, lam, c, *extra)

    def nfe_per_image(self, images: int) -> float:
        return self.evaluations / max(images, 1)


def _weights(w: float | Tensor, batch: int, device, dtype) -> Tensor:
    from guidediff.cuda_graphs import capturing

    if not torch.is_tensor(w):
        # a plain number is filled on the device: torch.as_tensor would copy it from the host, which a
        # CUDA graph capture refuses (seen on the H200: every trajectory capture fell back)
        require(math.isfinite(float(w)), f"guidance weight w must be finite, got {w}")
        return torch.full((batch,), float(w), dtype=dtype, device=device)
    w = w.to(dtype=dtype, device=device)
    # a graph capture cannot read w on the host: its eager warm-up call checked it. The message is
    # built only on failure: w.tolist() is itself a device-to-host copy, which a capture refuses
    # (seen on the H200: every trajectory capture with one weight per row fell back)
    if not capturing() and not bool(torch.isfinite(w).all()):
        raise UsageError(f"guidance weight w must be finite, got {w.tolist()}")
    return w.expand(batch) if w.dim() == 0 else w


def cfg(denoiser: Denoiser, w: float | Tensor, null_class: int) -> Denoiser:
    """Classifier-free guidance, CFG paper eq. (6): ε̃ = (1+w)·ε(z,c) − w·ε(z,∅).

    Conditional and unconditional rows go through ONE batched forward. ``w`` is a number or one
    weight per sample. A scalar w = 0 (conditional) or w = −1 (unconditional) needs one forward only.
    """
    if not torch.is_tensor(w):
        require(math.isfinite(float(w)), f"guidance weight w must be finite, got {w}")
        if float(w) == 0.0:
            return denoiser
        if float(w) == -1.0:
            return unconditional(denoiser, null_class)

    def guided(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        batch = z.shape[0]
        weight = per_sample(_weights(w, batch, z.device, z.dtype), z)
        null = torch.full_like(c, null_class)
        eps = denoiser(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, null]))
        eps_cond, eps_uncond = eps[:batch], eps[batch:]
        return eps_cond + weight * (eps_cond - eps_uncond)

    return guided


def unconditional(denoiser: Denoiser, null_class: int) -> Denoiser:
    """The same network asked for the unconditional prediction ε(z, ∅), whatever class is passed."""

    def uncond(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        return denoiser(z, lam, torch.full_like(c, null_class))

    return uncond


def classifier_guidance(denoiser: Denoiser, grad_log_prob: GradLogProb, scale: float | Tensor) -> Denoiser:
    """Classifier guidance in score form (Dhariwal & Nichol 2021, Algorithm 2; CFG paper eq. 4):
    ε̃ = ε(z[,c]) − s·σ_λ·∇_z log p(c | z_λ).

    ``grad_log_prob(z, lam, c)`` returns ∇_z log p(c | z) (see ``classifier_gradient``). On an
    unconditional denoiser with exact scores, s = w + 1 equals CFG with weight w.
    """

    def guided(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        eps = denoiser(z, lam, c)
        _, sigma = alpha_sigma(per_sample(lam, z))
        s = per_sample(_weights(scale, z.shape[0], z.device, z.dtype), z)
        return eps - s * sigma * grad_log_prob(z, lam, c)

    return guided


def classifier_gradient(log_prob: Callable[[Tensor, Tensor, Tensor], Tensor]) -> GradLogProb:
    """∇_z log p(c | z, λ) by autograd from ``log_prob(z, lam, c) -> [B]`` (e.g. a noisy
    classifier's log-softmax at c). Works inside samplers that run under no_grad or
    inference_mode (z is cloned out of an inference tensor); the graph is freed before returning,
    so nothing leaks across steps."""

    def grad(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            z_in = z.detach().clone().requires_grad_(True)
            total = log_prob(z_in, lam.clone(), c.clone()).sum()
            (g,) = torch.autograd.grad(total, z_in)
        return g.detach()

    return grad


# ---------------------------------------------------------------------------------------------
# Guidance variants (issue 10). Each is a denoiser -> denoiser wrapper like ``cfg`` and composes
# with every sampler. Those that act on the x̂-prediction convert with x̂ = (z − σ·ε̂)/α; an update
# u applied to x̂ is the update −(α/σ)·u applied to ε̂ (the map is affine), so no ε → x → ε round
# trip loses precision at extreme λ.

from guidediff.diffusion import eps_to_x  # noqa: E402 (appended section; kept beside its users)


def _cond_uncond(denoiser: Denoiser, z: Tensor, lam: Tensor, c: Tensor, null_class: int) -> tuple[Tensor, Tensor]:
    """ε(z, c) and ε(z, ∅) from one batched forward of 2B rows."""
    batch = z.shape[0]
    eps = denoiser(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, torch.full_like(c, null_class)]))
    return eps[:batch], eps[batch:]


def _x_update_to_eps(u: Tensor, z: Tensor, lam: Tensor) -> Tensor:
    """The change of ε̂ = (z − α·x̂)/σ caused by a change u of x̂: −(α/σ)·u."""
    alpha, sigma = alpha_sigma(per_sample(lam, z))
    return -(alpha / sigma) * u


def _x_from_eps_delta(d_eps: Tensor, z: Tensor, lam: Tensor) -> Tensor:
    """The change of x̂ = (z − σ·ε̂)/α caused by a change d_eps of ε̂: −(σ/α)·d_eps."""
    alpha, sigma = alpha_sigma(per_sample(lam, z))
    return -(sigma / alpha) * d_eps


def cfg_interval(denoiser: Denoiser, w: float | Tensor, null_class: int, lam_lo: float, lam_hi: float) -> Denoiser:
    """CFG applied only on a limited interval of noise levels (Kynkäänniemi et al. 2024, eq. 2),
    expressed in log-SNR: ε̃ = (1+w)·ε(z,c) − w·ε(z,∅) where λ ∈ [lam_lo, lam_hi], else ε(z,c).

    One forward per call: the B conditional rows plus an unconditional row only for the samples
    whose λ lies in the interval, so outside it a step costs one evaluation per image (as counted by
    ``CountingDenoiser``). ``lam_lo = -inf, lam_hi = inf`` is plain CFG.
    """
    require(float(lam_lo) <= float(lam_hi), f"guidance interval needs lam_lo <= lam_hi, got [{lam_lo}, {lam_hi}]")

    def guided(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        batch = z.shape[0]
        weight = _weights(w, batch, z.device, z.dtype)
        inside = (lam >= lam_lo) & (lam <= lam_hi) & (weight != 0)
        idx = inside.nonzero(as_tuple=True)[0]
        eps = denoiser(
            torch.cat([z, z[idx]]),
            torch.cat([lam, lam[idx]]),
            torch.cat([c, torch.full_like(c[idx], null_class)]),
        )
        eps_cond, eps_uncond = eps[:batch], eps[batch:]
        if idx.numel() == 0:
            return eps_cond
        wi = per_sample(weight[idx], eps_uncond)
        return eps_cond.index_add(0, idx, wi * (eps_cond[idx] - eps_uncond))

    return guided


def cfg_rescale(denoiser: Denoiser, w: float | Tensor, null_class: int, phi: float) -> Denoiser:
    """CFG with the guided prediction's per-sample std rescaled toward the conditional one
    (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", Sec. 3.4):

    x_cfg = (1+w)·x̂(z,c) − w·x̂(z,∅),  x_res = x_cfg·std(x̂(z,c))/std(x_cfg),
    x̃ = φ·x_res + (1−φ)·x_cfg.

    The paper rescales its v-prediction; we rescale the x̂-prediction (converted from ε̂), because
    the std of x̂ is the image statistic that over-guidance inflates and x̂ is defined for every
    parameterisation. std is over all non-batch elements of one sample. φ = 0 is plain CFG.
    """
    require(0.0 <= float(phi) <= 1.0, f"the CFG-rescale factor phi must lie in [0, 1], got {phi}")

    def guided(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        eps_cond, eps_uncond = _cond_uncond(denoiser, z, lam, c, null_class)
        weight = per_sample(_weights(w, z.shape[0], z.device, z.dtype), z)
        eps_cfg = eps_cond + weight * (eps_cond - eps_uncond)
        if float(phi) == 0.0:
            return eps_cfg
        x_cond = eps_to_x(z, eps_cond, lam)
        x_cfg = eps_to_x(z, eps_cfg, lam)
        dims = tuple(range(1, z.dim()))
        std_cond = x_cond.std(dim=dims, keepdim=True)
        std_cfg = x_cfg.std(dim=dims, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        x_res = x_cfg * (std_cond / std_cfg)
        return eps_cfg + _x_update_to_eps(float(phi) * (x_res - x_cfg), z, lam)

    return guided


class APG:
    """Adaptive projected guidance (Sadat et al. 2024, "Eliminating oversaturation and artifacts of
    high guidance scales", Algorithm 1), on the x̂-prediction D:

    Δ = D(z,c) − D(z,∅);  Δ ← Δ + β·Δ_prev (momentum, state kept across sampler steps);
    Δ ← Δ·min(1, r/‖Δ‖) (per-sample norm threshold r);  Δ = Δ_∥ + Δ_⊥ w.r.t. D(z,c);
    D̃ = D(z,c) + w·(Δ_⊥ + η·Δ_∥).

    (The paper writes the scale as s = 1 + w.) η = 1, β = 0, r = None is plain CFG. The momentum
    state belongs to one sampling run: call ``reset()`` before the next one (it is also reset
    when the batch shape changes).
    """

    def __init__(self, denoiser: Denoiser, w: float | Tensor, null_class: int, *, eta: float = 0.0,
                 momentum: float = 0.0, norm_threshold: float | None = None):
        require(norm_threshold is None or norm_threshold > 0, f"APG norm_threshold must be > 0 or None, got {norm_threshold}")
        require(math.isfinite(float(eta)) and math.isfinite(float(momentum)), "APG eta and momentum must be finite")
        self.denoiser, self.w, self.null_class = denoiser, w, null_class
        self.eta, self.momentum, self.norm_threshold = float(eta), float(momentum), norm_threshold
        self.running: Tensor | None = None

    def reset(self) -> None:
        self.running = None

    def __call__(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        eps_cond, eps_uncond = _cond_uncond(self.denoiser, z, lam, c, self.null_class)
        delta = _x_from_eps_delta(eps_cond - eps_uncond, z, lam)
        if self.momentum != 0.0:
            if self.running is not None and self.running.shape == delta.shape:
                delta = delta + self.momentum * self.running
            self.running = delta
        dims = tuple(range(1, z.dim()))
        if self.norm_threshold is not None:
            norm = torch.linalg.vector_norm(delta, dim=dims, keepdim=True)
            delta = delta * (self.norm_threshold / norm.clamp_min(torch.finfo(z.dtype).tiny)).clamp(max=1.0)
        x_cond = eps_to_x(z, eps_cond, lam)
        unit = x_cond / torch.linalg.vector_norm(x_cond, dim=dims, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        parallel = (delta * unit).sum(dim=dims, keepdim=True) * unit
        update = (delta - parallel) + self.eta * parallel
        weight = per_sample(_weights(self.w, z.shape[0], z.device, z.dtype), z)
        return eps_cond + _x_update_to_eps(weight * update, z, lam)


def apg(denoiser: Denoiser, w: float | Tensor, null_class: int, eta: float = 0.0, momentum: float = 0.0,
        norm_threshold: float | None = None) -> APG:
    """Adaptive projected guidance as a denoiser with ``reset()``; see ``APG``."""
    return APG(denoiser, w, null_class, eta=eta, momentum=momentum, norm_threshold=norm_threshold)


def autoguidance(denoiser: Denoiser, guide_denoiser: Denoiser, w: float | Tensor) -> Denoiser:
    """Autoguidance (Karras et al. 2024, eq. 2 in our weight convention):
    ε̃ = ε(z,c) + w·(ε(z,c) − ε_guide(z,c)), the guide a smaller or less-trained conditional model.

    Two networks, so two forwards. With the unconditional model as guide this is exactly CFG.
    """

    def guided(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        eps = denoiser(z, lam, c)
        eps_guide = guide_denoiser(z, lam, c)
        weight = per_sample(_weights(w, z.shape[0], z.device, z.dtype), z)
        return eps + weight * (eps - eps_guide)

    return guided


def classifier_mean_shift(grad_log_prob: GradLogProb, scale: float | Tensor):
    """Classifier guidance in mean form for the ancestral sampler (Dhariwal & Nichol 2021,
    Algorithm 1; Sohl-Dickstein et al. 2015): μ̃ ← μ̃ + s·Σ·∇_z log p(c | z_t, λ_t).

    Returns the ``mean_shift(z, lam_t, c, var)`` hook of ``samplers.sample_ancestral``. It agrees
    with the score form (``classifier_guidance``) to first order in the step size only.
    """

    def shift(z: Tensor, lam_t: Tensor, c: Tensor, var: Tensor) -> Tensor:
        lam = torch.as_tensor(lam_t, dtype=z.dtype, device=z.device).expand(z.shape[0])
        s = per_sample(_weights(scale, z.shape[0], z.device, z.dtype), z)
        return s * var * grad_log_prob(z, lam, c)

    return shift
