"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3 and App. C.2): the weights of a power-function
EMA of any length σ_rel, solved after training as a least-squares combination of stored snapshots
θ̂(t_i; γ_i) of two (or more) power EMAs.

The paper solves with continuous profiles p_{t,γ}(τ) = (γ+1)/t^{γ+1} · τ^γ on (0, t]. Our power EMA is
discrete (β_t = (1 − 1/t)^{γ+1} per step, ``ema.power_decay``), and its per-step weights have a closed
form too, so we solve in the discrete setting: a snapshot taken after t updates is exactly
Σ_τ w_τ(t, γ)·θ_τ with the weight vector of ``power_ema_weights``; a combination Σ_i x_i·θ̂(t_i; γ_i)
weights step τ by Σ_i x_i·w_τ(t_i, γ_i), and x is the least-squares fit of those vectors to the target's
(over steps 1..T, float64). A target equal to a stored profile is then reproduced exactly (up to the
float32 rounding of the snapshots). The continuous inner products are here as well
(``profile_inner_product``, ``solve_continuous``): they need no O(T) memory, and the tests check that
both solutions agree.

This module is the math alone. The model of a chosen σ_rel from a run's snapshots (what `guidediff
posthoc-ema` calls) is ``posthoc_snapshots.posthoc_ema``, beside the snapshot files it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def power_ema_weights(t: int, gamma: float, length: int | None = None) -> np.ndarray:
    """Per-step weights w_τ, τ = 1..t, of the discrete power EMA after t updates (EDM2 eq. 2 with
    β_s = (1 − 1/s)^{γ+1}): the decays telescope, Π_{s=τ+1..t} β_s = (τ/t)^{γ+1}, so
    w_τ = (1 − β_τ)·(τ/t)^{γ+1} = (τ^{γ+1} − (τ−1)^{γ+1}) / t^{γ+1}, summing to 1. Zero-padded to
    ``length`` (steps after t carry no weight)."""
    length = t if length is None else length
    if t < 1 or length < t:
        raise ValueError(f"need 1 <= t <= length, got t={t}, length={length}")
    tau = np.arange(1, t + 1, dtype=np.float64)
    # 1 − (1 − 1/τ)^{γ+1} via expm1/log1p: no cancellation for large τ (τ = 1 gives log1p(−1) = −inf → 1)
    with np.errstate(divide="ignore"):
        one_minus_beta = -np.expm1((gamma + 1.0) * np.log1p(-1.0 / tau))
    w = np.zeros(length, dtype=np.float64)
    w[:t] = one_minus_beta * np.exp((gamma + 1.0) * np.log(tau / t))
    return w


def profile_inner_product(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """⟨p_a, p_b⟩ = ∫ p_{t_a,γ_a}(τ)·p_{t_b,γ_b}(τ) dτ of two continuous power profiles (EDM2 App. C.2):
    with m = min(t_a, t_b), (γ_a+1)(γ_b+1)/(γ_a+γ_b+1) · m^{γ_a+γ_b+1} / (t_a^{γ_a+1} t_b^{γ_b+1}),
    written as (m/t_a)^{γ_a+1}·(m/t_b)^{γ_b+1}/m so that large t and γ do not overflow."""
    m = min(t_a, t_b)
    return ((gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)
            * (m / t_a) ** (gamma_a + 1) * (m / t_b) ** (gamma_b + 1) / m)


def solve_continuous(ts, gammas, t_r: float, gamma_r: float, rcond: float = 1e-12) -> np.ndarray:
    """Coefficients x minimising ‖Σ_i x_i p_{t_i,γ_i} − p_{t_r,γ_r}‖² in L²(0, ∞) (EDM2 App. C.2):
    the normal equations G x = b with G_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_r⟩, solved by least squares."""
    G = np.array([[profile_inner_product(ta, ga, tb, gb) for tb, gb in zip(ts, gammas)]
                  for ta, ga in zip(ts, gammas)])
    b = np.array([profile_inner_product(ta, ga, t_r, gamma_r) for ta, ga in zip(ts, gammas)])
    return np.linalg.lstsq(G, b, rcond=rcond)[0]


@dataclass
class PosthocBasis:
    """The discrete weight vectors a_i = w(t_i, γ_i) of stored snapshots over steps 1..T, T = max t_i,
    factored once (SVD) so that many targets can be solved and judged cheaply.

    The fit is constrained to Σ_i x_i = 1 (the combination's per-step weights sum to 1, as the
    target's do): without it a coefficient sum of 1 ± 1e-3 scales every weight of the model by that
    much, an error far larger than the profiles' differences. One coefficient (the pivot, a snapshot
    of the last step) is eliminated as x_p = 1 − Σ_{i≠p} x_i, the rest is plain least squares.
    Memory is T × (number of snapshots) float64: 20 MB for 24k steps and 100 snapshots."""

    ts: tuple[int, ...]
    gammas: tuple[float, ...]
    rcond: float = 1e-10  # singular values below rcond·s_max are dropped: near-duplicate snapshots

    def __post_init__(self):
        if not self.ts or len(self.ts) != len(self.gammas):
            raise ValueError("need one γ per snapshot and at least one snapshot")
        self.T = int(max(self.ts))
        A = np.stack([power_ema_weights(int(t), g, self.T) for t, g in zip(self.ts, self.gammas)], axis=1)
        self.pivot = int(np.argmax(self.ts))
        self._a_pivot = A[:, self.pivot]
        rest = np.delete(A, self.pivot, axis=1) - self._a_pivot[:, None]
        if rest.shape[1] == 0:
            self._U, self._s, self._Vt = np.zeros((self.T, 0)), np.zeros(0), np.zeros((0, 0))
            return
        U, s, Vt = np.linalg.svd(rest, full_matrices=False)
        keep = s > self.rcond * s[0]
        self._U, self._s, self._Vt = U[:, keep], s[keep], Vt[keep]

    def _target(self, gamma_r: float, t_r: int | None) -> np.ndarray:
        return power_ema_weights(self.T if t_r is None else t_r, gamma_r, self.T) - self._a_pivot

    def coefficients(self, gamma_r: float, t_r: int | None = None) -> np.ndarray:
        """x with Σ_i x_i·θ̂(t_i; γ_i) ≈ θ̂(t_r; γ_r) and Σ_i x_i = 1 (least squares over the per-step
        weights), t_r = T by default."""
        z = self._Vt.T @ ((self._U.T @ self._target(gamma_r, t_r)) / self._s)
        return np.insert(z, self.pivot, 1.0 - z.sum())

    def fit_error(self, gamma_r: float, t_r: int | None = None) -> float:
        """Relative L² error ‖A x − w_r‖/‖w_r‖ of the best combination's per-step weights."""
        w_r = power_ema_weights(self.T if t_r is None else t_r, gamma_r, self.T)
        target = w_r - self._a_pivot
        residual = target - self._U @ (self._U.T @ target)
        return float(np.linalg.norm(residual) / np.linalg.norm(w_r))
