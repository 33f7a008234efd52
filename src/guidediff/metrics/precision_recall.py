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


def in_union_of_balls(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                      chunk: int = 1024) -> torch.Tensor:
    """Bool [Q]: whether each query lies within radii[j] of some centre j (Kynkäänniemi eq. 1)."""
    inside = []
    for start in range(0, len(query), chunk):
        d = torch.cdist(query[start:start + chunk], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, device: str | torch.device = "cpu",
                     chunk: int = 1024) -> tuple[float, float]:
    """(precision, recall): the share of fake samples inside the real manifold estimate (union of
    real k-NN balls), and the share of real samples inside the fake one (Kynkäänniemi et al. 2019,
    §2, k = 3 as in the paper)."""
    r = torch.as_tensor(np.asarray(real, np.float32), device=device)
    f = torch.as_tensor(np.asarray(fake, np.float32), device=device)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise UsageError(f"precision/recall need two feature sets [N, D] of one D, got {list(r.shape)} "
                         f"and {list(f.shape)}")
    if min(len(r), len(f)) <= k:
        raise UsageError(f"precision/recall with k={k} need more than {k} samples in each set, got "
                         f"{len(r)} real and {len(f)} generated")
    precision = in_union_of_balls(f, r, knn_radii(r, k, chunk), chunk).float().mean().item()
    recall = in_union_of_balls(r, f, knn_radii(f, k, chunk), chunk).float().mean().item()
    return precision, recall
