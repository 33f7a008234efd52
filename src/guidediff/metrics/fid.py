"""Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, FID)."""

from __future__ import annotations

import numpy as np

from guidediff.errors import UsageError


def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], both float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise UsageError(f"need features [N, D] with N >= 2 to fit a Gaussian, got shape {list(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by eigh; round-off negatives clipped to 0."""
    vals, vecs = np.linalg.eigh(sigma)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)  (Dowson & Landau 1982; FID).

    The trace of the cross term only needs eigenvalues, and M = Σ1^½ Σ2 Σ1^½ is symmetric PSD,
    so we take tr M^½ = Σ √eig(M) with eigh. This is why we do not use scipy.linalg.sqrtm(Σ1 Σ2):
    Σ1 Σ2 is not symmetric, its Schur-based square root picks up spurious imaginary parts and
    needs an ε·I fix-up when the covariances are singular (dead feature units make them so),
    whereas eigh of a symmetric matrix is backward stable, real, and handles rank deficiency by
    clipping round-off eigenvalues at zero. Σ1 Σ2 and M are similar, so the value is the same.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise UsageError(f"Gaussian statistics do not match: means {list(mu1.shape)} / {list(mu2.shape)}, "
                         f"covariances {list(s1.shape)} / {list(s2.shape)}; were they made with the "
                         "same feature extractor?")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    cross = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    # Round-off can leave a tiny negative value for identical statistics.
    return max(d2, 0.0)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets [N1, D] and [N2, D]."""
    return frechet_distance(*fit_gaussian(features1), *fit_gaussian(features2))
