"""Class accuracy of samples (CAS): how often the classifier agrees with the asked class."""

from __future__ import annotations

import numpy as np

from guidediff.errors import UsageError


def class_accuracy(probs: np.ndarray, labels: np.ndarray) -> dict | None:
    """{"overall": share of argmax p(y|x) == c, "per_class": {c: share}, "n": count} over c ≥ 0.

    Label −1 marks an unconditional sample and is left out; None when no sample has a class.
    """
    p = np.asarray(probs)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(p) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"labels must be integers [N] matching the {len(p)} images, got {y.dtype} {list(y.shape)}")
    k = p.shape[1]
    if y.size and (y.min() < -1 or y.max() >= k):
        raise UsageError(f"labels must lie in 0..{k - 1} (or -1 for unconditional), got "
                         f"{int(y.min())}..{int(y.max())}")
    keep = y >= 0
    if not keep.any():
        return None
    hit = p[keep].argmax(axis=1) == y[keep]
    per_class = {str(c): float(hit[y[keep] == c].mean()) for c in np.unique(y[keep])}
    return {"overall": float(hit.mean()), "per_class": per_class, "n": int(keep.sum())}
