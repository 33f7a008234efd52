"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls in feature space."""

from __future__ import annotations

import numpy as np
import torch

from guidediff.errors import UsageError


def knn_radii(f: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of f to its k-th nearest other row (self, at distance 0, excluded)."""
    radii = []
    for start in range(0, len(f), chunk):
        d = torch.cdist(f[start:start + chunk], f)
        # k+1 smallest: the first is the point itself.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, device: str | torch.device = "cpu",
                     chunk: int = 1024) -> tuple[float, float]:
    """(precision, recall): the share of fake samples inside the real manifold estimate (union of
    real k-NN balls), and the share of real samples inside the fake one (Kynkäänniemi et al. 2019,
    eq. 1-3, k = 3 as in the paper)."""
    r = torch.as_tensor(np.asarray(real, np.float32), device=device)
    f = torch.as_tensor(np.asarray(fake, np.float32), device=device)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise UsageError(f"precision/recall need two feature sets [N, D] of one D, got {list(r.shape)} "
                         f"and {list(f.shape)}")
    if min(len(r), len(f)) <= k:
        raise UsageError(f"precision/recall with k={k} need more than {k} samples in each set, got "
                         f"{len(r)} real and {len(f)} generated")
    radius_real, radius_fake = knn_radii(r, k, chunk), knn_radii(f, k, chunk)
    # One pass over the fake×real distances serves both directions.
    fake_inside = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    real_inside = torch.zeros(len(r), dtype=torch.bool, device=r.device)
    for start in range(0, len(f), chunk):
        d = torch.cdist(f[start:start + chunk], r)
        fake_inside[start:start + chunk] = (d <= radius_real[None, :]).any(dim=1)
        real_inside |= (d <= radius_fake[start:start + chunk, None]).any(dim=0)
    return fake_inside.float().mean().item(), real_inside.float().mean().item()
