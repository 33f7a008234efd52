"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with a cubic polynomial kernel."""

from __future__ import annotations

import numpy as np
import torch

from guidediff.errors import UsageError


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³ (Bińkowski et al. 2018, eq. 2 and §4).

    Within-set sums leave out the diagonal k(x_i, x_i), which is what makes the estimate unbiased.
    """
    m, n, d = len(x), len(y), x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return sxx + syy - 2 * kxy.mean()


def kid(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Mean and std of MMD² over `num_subsets` random subsets of min(subset_size, N1, N2) each.

    Float64 throughout: the estimate is a difference of large, nearly equal kernel sums.
    """
    f1 = torch.as_tensor(np.asarray(features1, np.float64), device=device)
    f2 = torch.as_tensor(np.asarray(features2, np.float64), device=device)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise UsageError(f"KID needs two feature sets [N, D] of one D, got {list(f1.shape)} and {list(f2.shape)}")
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise UsageError(f"KID needs at least 2 samples in each set, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        i = torch.as_tensor(rng.choice(len(f1), size, replace=False), device=f1.device)
        j = torch.as_tensor(rng.choice(len(f2), size, replace=False), device=f2.device)
        values.append(mmd2_unbiased(f1[i], f2[j]))
    v = torch.stack(values).cpu().numpy()
    return float(v.mean()), float(v.std())
