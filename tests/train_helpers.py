"""Shared by test_train, test_sample_cli and test_ddp: a tiny config and a tiny image set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_test.toml"


def tiny_arrays(n_per_class: int = 16, classes: int = 3, size: int = 8, seed: int = 0):
    """A DatasetArrays of n_per_class small grayscale images per class (class c is brighter)."""
    from guidediff.data.images import DatasetArrays

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class).astype(np.int64)
    images = (rng.random((len(labels), size, size, 1)) * 80 + labels[:, None, None, None] * 80).astype(np.uint8)
    return DatasetArrays(images, labels, [f"c{c}" for c in range(classes)], classes)


def tiny_folder(root: Path, n_per_class: int = 16, classes: int = 3, size: int = 8) -> Path:
    """The same images as PNG files, one sub-folder per class."""
    from PIL import Image

    data = tiny_arrays(n_per_class, classes, size)
    for k, (img, c) in enumerate(zip(data.images, data.labels)):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[..., 0]).save(folder / f"{k:03d}.png")
    return root


def tiny_config(*overrides: str):
    from guidediff.config import load_config

    return load_config(TINY, ["data.resolution=8", "data.channels=1", *overrides])
