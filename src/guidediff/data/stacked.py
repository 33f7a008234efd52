"""Stacked Fashion-MNIST: three images as the R, G, B channels, 10³ = 1000 modes.

The StackedMNIST mode-coverage protocol (as used by DDGAN, Xiao et al. 2022) applied to
Fashion-MNIST: each channel is an independently drawn image, and the mode of a sample is the
triple of its channels' classes.
"""

from __future__ import annotations

import numpy as np

from guidediff.errors import UsageError

NUM_MODES = 1000


def stacked_mode(l0: np.ndarray, l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """Mode index 100·l0 + 10·l1 + l2 of a stacked image whose channels have classes l0, l1, l2."""
    return 100 * np.asarray(l0, np.int64) + 10 * np.asarray(l1, np.int64) + np.asarray(l2, np.int64)


def make_stacked_fmnist(images: np.ndarray, labels: np.ndarray, n: int, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """n stacked images uint8 [n, 28, 28, 3] and their modes int64 [n], reproducible from seed."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
        raise UsageError(f"stacking needs grayscale images [N, H, W] with N matching labels; got "
                         f"images {images.shape} and {len(labels)} labels")
    if n < 1:
        raise UsageError(f"number of stacked images must be positive, got {n}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(images), size=(n, 3))
    x = np.ascontiguousarray(np.moveaxis(images[idx], 1, -1))
    labels = np.asarray(labels, np.int64)
    return x, stacked_mode(labels[idx[:, 0]], labels[idx[:, 1]], labels[idx[:, 2]])
