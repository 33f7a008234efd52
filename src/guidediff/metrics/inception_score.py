"""Inception Score over any classifier's softmax (Salimans et al. 2016); IS-FMNIST with ours."""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from guidediff.errors import UsageError


def inception_score(probs: np.ndarray) -> float:
    """IS = exp E_x KL(p(y|x) ‖ p(y)), p(y) the mean prediction (Salimans et al. 2016, §4).

    Lies in [1, K]: 1 when every prediction equals the marginal, K for confident predictions
    spread evenly over K classes. 0·log 0 is taken as 0 (xlogy).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise UsageError(f"inception_score needs probabilities [N, K], got shape {list(p.shape)}")
    marginal = p.mean(axis=0, keepdims=True)
    kl = (xlogy(p, p) - xlogy(p, marginal)).sum(axis=1)
    return float(np.exp(kl.mean()))
