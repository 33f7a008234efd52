"""Mode coverage, the DDGAN / PacGAN / VEEGAN protocol, as pure functions.

- 2-D grids (25-Gaussians, Xiao et al. 2022 Fig. 6; Srivastava et al. 2017 §5): a sample is of
  *high quality* when it lies within n_sigma (3) standard deviations of its nearest mode's mean;
  a mode is *covered* when at least ``min_count`` high-quality samples are nearest to it.
- Stacked images (StackedMNIST, Lin et al. 2018 §5; DDGAN Table 3): each channel is classified
  on its own, the mode is the triple of classes (1000 modes), and we report the modes with at
  least one sample and KL(mode histogram ‖ uniform).

These live in ddgan/ because metrics/ belongs to another part of the project; they use nothing
DDGAN-specific.
"""

from __future__ import annotations

import numpy as np

from guidediff.errors import require


def nearest_modes(points: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest mean int64 [N], Euclidean distance to it float64 [N])."""
    points = np.asarray(points, np.float64)
    means = np.asarray(means, np.float64)
    require(points.ndim == 2 and means.ndim == 2 and points.shape[1] == means.shape[1],
            f"points [N, d] and means [K, d] must share d, got {points.shape} and {means.shape}")
    d2 = ((points[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    idx = d2.argmin(axis=1)
    return idx.astype(np.int64), np.sqrt(d2[np.arange(len(points)), idx])


def grid_coverage(points: np.ndarray, means: np.ndarray, std: float, *, n_sigma: float = 3.0,
                  min_count: int = 1) -> dict:
    """Modes covered and the share of high-quality samples of 2-D points around known modes.

    A point is high quality when its distance to the nearest mean is at most n_sigma·std; a mode
    is covered when at least min_count high-quality points are nearest to it. Non-finite points
    count as low quality. Returns {"modes", "high_quality_share", "counts" (per mode), "n"}.
    """
    points = np.asarray(points, np.float64)
    means = np.asarray(means, np.float64)
    require(len(points) > 0, "need at least one sample to count modes")
    finite = np.isfinite(points).all(axis=1)
    idx, dist = nearest_modes(np.where(finite[:, None], points, 0.0), means)
    good = finite & (dist <= n_sigma * std)
    counts = np.bincount(idx[good], minlength=len(means))
    return {"modes": int((counts >= min_count).sum()), "high_quality_share": float(good.mean()),
            "counts": counts.tolist(), "n": int(len(points))}


def mode_histogram(modes: np.ndarray, num_modes: int) -> np.ndarray:
    """Counts int64 [num_modes] of mode indices in 0..num_modes−1."""
    modes = np.asarray(modes, np.int64)
    require(modes.ndim == 1 and (len(modes) == 0 or (modes.min() >= 0 and modes.max() < num_modes)),
            f"mode indices must be a 1-D array in 0..{num_modes - 1}")
    return np.bincount(modes, minlength=num_modes)


def kl_to_uniform(counts: np.ndarray) -> float:
    """KL(p ‖ U) = Σ_k p_k·log(K·p_k) in nats, p = counts/Σcounts, U uniform over the K modes
    (0·log 0 = 0). 0 for a perfectly even histogram, log K when all samples share one mode."""
    counts = np.asarray(counts, np.float64)
    require(counts.ndim == 1 and len(counts) > 0 and (counts >= 0).all() and counts.sum() > 0,
            "counts must be a non-empty 1-D array of non-negative numbers with a positive sum")
    p = counts / counts.sum()
    nz = p > 0
    return float((p[nz] * np.log(len(p) * p[nz])).sum())


def kl_parts(counts: np.ndarray, shape: tuple[int, ...]) -> dict:
    """KL(p ‖ U) of a histogram over a product of factors (stacked Fashion-MNIST: 10 × 10 × 10, the
    class of each channel) split exactly into where the mass is missing:

        KL(p ‖ U) = Σ_k KL(p_k ‖ U_k) + TC(p),   TC(p) = KL(p ‖ Π_k p_k)

    (the chain rule of KL for a product reference). The marginal terms say that some classes are
    rarely drawn in channel k; the total correlation TC says that the channels are not drawn
    independently (e.g. the same garment in all three). All in nats."""
    counts = np.asarray(counts, np.float64)
    require(counts.ndim == 1 and counts.size == int(np.prod(shape)),
            f"counts must be a 1-D array of {int(np.prod(shape))} entries for the factors {tuple(shape)}")
    require((counts >= 0).all() and counts.sum() > 0, "counts must be non-negative with a positive sum")
    p = counts.reshape(shape) / counts.sum()
    axes = range(len(shape))
    marginals = [p.sum(axis=tuple(a for a in axes if a != k)) for k in axes]
    independent = marginals[0]
    for m in marginals[1:]:
        independent = np.multiply.outer(independent, m)
    nz = p > 0
    return {"kl_marginals": [kl_to_uniform(m) for m in marginals],
            "total_correlation": float((p[nz] * np.log(p[nz] / independent[nz])).sum())}


def modes_covered(counts: np.ndarray, min_count: int = 1) -> int:
    """Number of modes with at least min_count samples."""
    return int((np.asarray(counts) >= min_count).sum())


def stacked_modes(images: np.ndarray, classifier, device="cpu", batch_size: int = 1000) -> np.ndarray:
    """Mode 100·l_R + 10·l_G + l_B of each stacked image uint8 [N, 28, 28, 3], each channel
    classified on its own by ``classifier`` (the Fashion-MNIST evaluation classifier)."""
    from guidediff.data.stacked import stacked_mode
    from guidediff.metrics.features import extract

    images = np.asarray(images)
    require(images.ndim == 4 and images.shape[1:] == (28, 28, 3) and images.dtype == np.uint8,
            f"stacked images must be uint8 [N, 28, 28, 3], got {images.dtype} {list(images.shape)}")
    labels = [extract(images[..., k:k + 1], classifier, batch_size, device)[1].argmax(axis=1) for k in range(3)]
    return stacked_mode(*labels)


def stacked_coverage(images: np.ndarray, classifier, device="cpu", batch_size: int = 1000) -> dict:
    """{"modes": modes with ≥ 1 sample (of 1000), "kl": KL(histogram ‖ uniform), "n", and the KL's
    split into the three channels' class marginals and their total correlation (``kl_parts``)}."""
    from guidediff.data.stacked import NUM_MODES

    counts = mode_histogram(stacked_modes(images, classifier, device, batch_size), NUM_MODES)
    return {"modes": modes_covered(counts), "kl": kl_to_uniform(counts), "n": int(counts.sum()),
            **kl_parts(counts, (10, 10, 10))}
