"""Gaussian mixtures with class-labelled components: the exact oracle for guided diffusion.

Under the variance-preserving forward process z_λ = α_λ·x + σ_λ·ε a component N(m, S) becomes
N(α·m, α²·S + σ²·I), so the noised densities, their scores (hence the exact ε = −σ·∇_z log p),
and the Bayes classifier p(c | z_λ) are all closed-form. ``GaussianMixture`` exposes them with the
library's contracts: calling it is a denoiser ``(z, lam, c) -> eps`` whose null token is
``num_classes`` (so ``guidance.cfg`` works on it unchanged), and ``grad_log_prob`` is the
classifier gradient that ``guidance.classifier_guidance`` takes.

Every covariance is diagonalised once, S_k = U_k·diag(s_k)·U_kᵀ; then α²S_k + σ²I has the same
eigenvectors and eigenvalues α²s_k + σ², which makes inverses and log-determinants elementwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from guidediff.errors import UsageError, require
from guidediff.schedules import alpha_sigma


@dataclass(frozen=True)
class _Params:
    """The mixture's parameters cast to one dtype/device (cached: sampling calls it every step)."""

    means: Tensor  # [K, d]
    eigvals: Tensor  # [K, d]
    eigvecs: Tensor  # [K, d, d], columns are eigenvectors
    log_weights: Tensor  # [K]
    labels: Tensor  # [K] int64
    class_bias: Tensor  # [K, C+1]: log π_k − log p(c) where component k is in class c, else −inf
    axis_aligned: bool  # every eigenbasis is the identity: the rotations can be skipped


@dataclass(eq=False)
class GaussianMixture:
    """Σ_k π_k·N(m_k, S_k) where component k belongs to class ``labels[k]``.

    p(x | c) is the mixture of the components labelled c, re-weighted within the class;
    p(c) = Σ_{k: label k = c} π_k. Parameters are stored in float64; computations run in the dtype
    of the input z (float64 for tests, float32 for fast sampling).
    """

    means: Tensor
    covs: Tensor
    weights: Tensor
    labels: Tensor
    name: str = "mixture"
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.covs = torch.as_tensor(self.covs, dtype=torch.float64)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        k, d = self.means.shape
        require(self.covs.shape == (k, d, d), f"covs must have shape [{k}, {d}, {d}], got {list(self.covs.shape)}")
        require(self.weights.shape == (k,) and self.labels.shape == (k,), "weights and labels need one entry per component")
        require(bool((self.weights > 0).all()), "mixture weights must be positive")
        self.weights = self.weights / self.weights.sum()
        require(bool((self.labels >= 0).all()), "class labels must be >= 0")
        present = set(self.labels.tolist())
        require(
            present == set(range(len(present))),
            f"class labels must be 0..C-1 with every class used, got {sorted(present)}",
        )
        sym = 0.5 * (self.covs + self.covs.transpose(-1, -2))
        self.eigvals, self.eigvecs = torch.linalg.eigh(sym)
        require(bool((self.eigvals > 0).all()), "every covariance must be positive definite")

    # ----------------------------------------------------------------- basic facts
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def null_class(self) -> int:
        """The null token ∅ of the denoiser contract."""
        return self.num_classes

    def class_prior(self) -> Tensor:
        """p(c) = Σ_{k in c} π_k, float64 [C]."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.labels, self.weights)

    def _params(self, dtype: torch.dtype, device) -> _Params:
        key = (dtype, str(device))
        if key not in self._cache:
            # p(z | c) = Σ_{k in c} (π_k / p(c))·N_k; the null column (∅, p = 1) takes every component.
            in_class = self.labels[:, None] == torch.arange(self.num_classes + 1)[None, :]
            in_class[:, -1] = True
            log_pc = torch.cat([self.class_prior().log(), torch.zeros(1, dtype=torch.float64)])
            bias = (self.weights.log()[:, None] - log_pc[None, :]).masked_fill(~in_class, -math.inf)
            eye = torch.eye(self.dim, dtype=torch.float64).expand_as(self.eigvecs)
            self._cache[key] = _Params(
                self.means.to(dtype=dtype, device=device),
                self.eigvals.to(dtype=dtype, device=device),
                self.eigvecs.to(dtype=dtype, device=device),
                self.weights.log().to(dtype=dtype, device=device),
                self.labels.to(device=device),
                bias.to(dtype=dtype, device=device),
                bool(torch.equal(self.eigvecs, eye)),
            )
        return self._cache[key]

    # ----------------------------------------------------------------- sampling the data
    def sample(
        self, n: int, *, classes: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact draws (x [n, d] float64, y [n] int64): from p(x) when ``classes`` is None
        (y is then the component's class), else from p(x | classes[i]) for each i ([n] int64)."""
        if classes is None:
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            classes = torch.as_tensor(classes, dtype=torch.int64).expand(n)
            # Within-class component choice by Gumbel-max over the weights restricted to the class.
            mask = self.labels[None, :] == classes[:, None]
            logits = self.weights.log()[None, :].expand(n, -1).masked_fill(~mask, -math.inf)
            u = torch.rand(logits.shape, dtype=torch.float64, generator=generator).clamp_min(1e-300)
            comp = (logits - torch.log(-torch.log(u))).argmax(dim=1)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        scaled = self.eigvecs[comp] @ (self.eigvals[comp].sqrt() * eps)[..., None]
        return self.means[comp] + scaled[..., 0], self.labels[comp]

    # ----------------------------------------------------------------- the closed forms
    def _component_terms(self, z: Tensor, alpha: Tensor, sigma2: Tensor) -> tuple[Tensor, Tensor]:
        """log N(z; α·m_k, α²S_k + σ²I) [K, B] and C_k⁻¹(z − α·m_k) [K, d, B] (VDM eq. 1 per component).

        α, σ² are [B] or [1] (one λ for the batch, as inside a sampler). Laid out batch-last, every
        elementwise op and every reduction over k or d runs over contiguous length-B vectors, which
        is many times faster on CPU than [B, K, d] with its tiny inner axes.
        """
        p = self._params(z.dtype, z.device)
        diff = z.T.contiguous()[None] - p.means[:, :, None] * alpha  # [K, d, B]
        proj = diff if p.axis_aligned else torch.bmm(p.eigvecs.transpose(1, 2), diff)
        var = p.eigvals[:, :, None] * (alpha * alpha) + sigma2  # eigenvalues of α²S + σ²I
        scaled = proj * var.reciprocal()
        log_norm = -0.5 * (var.log().sum(1) + self.dim * math.log(2 * math.pi))  # [K, B] or [K, 1]
        log_n = _sum_axis1(proj * scaled).mul_(-0.5).add_(log_norm)
        return log_n, scaled if p.axis_aligned else torch.bmm(p.eigvecs, scaled)

    def _log_prob_and_score(self, z: Tensor, alpha: Tensor, sigma2: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """log p(z | c) [B] and ∇_z log p(z | c) [B, d]; the null class mixes every component."""
        c = c.to(z.device)
        require(
            int(c.min()) >= 0 and int(c.max()) <= self.null_class,
            f"class indices must lie in 0..{self.num_classes - 1} (or {self.null_class} for unconditional)",
        )
        half = _repeated_half(z, alpha)
        if half:
            # A CFG batch [z; z] (conditional rows, then null rows): the component terms depend on
            # z and λ only, so compute them once and mix them twice.
            log_n, cinv_diff = self._component_terms(z[:half], alpha[:half], sigma2[:half])
            first = self._mix(log_n.clone(), cinv_diff, c[:half])
            second = self._mix(log_n, cinv_diff, c[half:])
            return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
        log_n, cinv_diff = self._component_terms(z, alpha, sigma2)
        return self._mix(log_n, cinv_diff, c)

    def _mix(self, log_n: Tensor, cinv_diff: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Combine the components of each row's class: log Σ_k (π_k/p(c))·N_k and −Σ_k r_k·C_k⁻¹(z − α·m_k)."""
        p = self._params(log_n.dtype, log_n.device)
        # log(π_k/p(c)·N_k), −∞ outside the class; one broadcast column when the batch has one class
        lo, hi = int(c.min()), int(c.max())
        bias = p.class_bias[:, lo : lo + 1] if lo == hi else p.class_bias.index_select(1, c)
        logits = log_n.add_(bias)
        # logsumexp and softmax over k by hand: torch's versions reduce a strided axis slowly.
        # (the shift is a constant for autograd: logsumexp's gradient does not depend on it)
        top = logits[0].detach().clone()
        for k in range(1, logits.shape[0]):
            torch.maximum(top, logits[k].detach(), out=top)
        expd = logits.sub_(top).exp_()
        total = expd.sum(0)
        neg_resp = expd / total.neg()  # minus the responsibilities within the class
        score = (neg_resp[:, None, :] * cinv_diff).sum(0).T
        return top + total.log(), score

    def _alpha_sigma2(self, lam: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """α [B] and σ² [B]; [1] each when λ is one value for the batch (the sampler's case)."""
        lam = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
        if lam.dim() == 0 or lam.numel() == 1 or lam.stride(0) == 0 or bool((lam == lam[0]).all()):
            lam = lam.reshape(-1)[:1]
        else:
            lam = lam.expand(like.shape[0])
        alpha, _ = alpha_sigma(lam)
        # σ² = sigmoid(−λ) directly (not 1 − α²), precise at high λ.
        return alpha, torch.sigmoid(-lam)

    def log_prob(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        """log p(z_λ | c) [B]; c = null_class gives the marginal log p(z_λ)."""
        alpha, sigma2 = self._alpha_sigma2(lam, z)
        return self._log_prob_and_score(z, alpha, sigma2, _as_classes(c, z))[0]

    def score(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        """∇_z log p(z_λ | c) [B, d] = −Σ_k r_k(z)·C_k⁻¹(z − α·m_k), r_k the responsibilities in c."""
        alpha, sigma2 = self._alpha_sigma2(lam, z)
        return self._log_prob_and_score(z, alpha, sigma2, _as_classes(c, z))[1]

    def eps(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        """The exact ε-prediction E[ε | z_λ, c] = −σ_λ·∇_z log p(z_λ | c) (Tweedie)."""
        alpha, sigma2 = self._alpha_sigma2(lam, z)
        score = self._log_prob_and_score(z, alpha, sigma2, _as_classes(c, z))[1]
        return -sigma2.sqrt()[:, None] * score

    __call__ = eps

    def log_class_prob(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        """The Bayes classifier log p(c | z_λ) = log p(z_λ | c) + log p(c) − log p(z_λ) [B]."""
        c = _as_classes(c, z)
        require(bool((c < self.null_class).all()), "the classifier needs real classes, not the null token")
        log_pc = torch.log(self.class_prior().to(dtype=z.dtype, device=z.device))[c.to(z.device)]
        null = torch.full_like(c, self.null_class)
        return self.log_prob(z, lam, c) + log_pc - self.log_prob(z, lam, null)

    def grad_log_prob(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        """∇_z log p(c | z_λ) = ∇ log p(z_λ | c) − ∇ log p(z_λ) [B, d], for guidance.classifier_guidance."""
        c = _as_classes(c, z)
        null = torch.full_like(c, self.null_class)
        both = self.score(torch.cat([z, z]), torch.cat([_lam_batch(lam, z)] * 2), torch.cat([c, null]))
        return both[: z.shape[0]] - both[z.shape[0] :]

    def log_prob_data(self, x: Tensor, c: Tensor) -> Tensor:
        """log p(x | c) of the clean data (α = 1, σ = 0) [B]; c = null_class gives log p(x)."""
        one = torch.ones(1, dtype=x.dtype, device=x.device)
        return self._log_prob_and_score(x, one, torch.zeros_like(one), _as_classes(c, x))[0]

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        """``{"components": [{"mean", "cov", "weight", "label"}, ...]}`` (the toy's dataset.json)."""
        return {
            "name": self.name,
            "components": [
                {"mean": m.tolist(), "cov": s.tolist(), "weight": float(p), "label": int(c)}
                for m, s, p, c in zip(self.means, self.covs, self.weights, self.labels)
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> "GaussianMixture":
        comps = data.get("components")
        if not comps:
            raise UsageError("a mixture description needs a non-empty 'components' list")
        return cls(
            means=[c["mean"] for c in comps],
            covs=[c["cov"] for c in comps],
            weights=[c["weight"] for c in comps],
            labels=[c["label"] for c in comps],
            name=str(data.get("name", "mixture")),
        )


def _sum_axis1(t: Tensor) -> Tensor:
    """t.sum(1) for a short axis 1 as explicit adds of contiguous slices (a strided reduction is slow)."""
    if t.shape[1] > 8 or t.shape[1] < 2:
        return t.sum(1)
    out = t[:, 0] + t[:, 1]
    for i in range(2, t.shape[1]):
        out += t[:, i]
    return out


def _repeated_half(z: Tensor, alpha: Tensor) -> int:
    """B/2 when the batch is [z; z] at one λ per row pair (as guidance.cfg builds it), else 0."""
    b = z.shape[0]
    if b < 2 or b % 2 or z.requires_grad:
        return 0
    h = b // 2
    same_alpha = alpha.numel() == 1 or torch.equal(alpha[:h], alpha[h:])
    return h if same_alpha and torch.equal(z[:h], z[h:]) else 0


def _as_classes(c, like: Tensor) -> Tensor:
    return torch.as_tensor(c, dtype=torch.int64, device=like.device).expand(like.shape[0])


def _lam_batch(lam, like: Tensor) -> Tensor:
    return torch.as_tensor(lam, dtype=like.dtype, device=like.device).expand(like.shape[0])
