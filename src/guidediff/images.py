"""Sample grids as PNG files, from uint8 images [N, H, W, C] (the sample-file layout).

Float [B, C, H, W] tensors in [-1, 1] convert with ``to_uint8`` (from guidediff.data.images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from guidediff.data.images import to_uint8
from guidediff.errors import require

__all__ = ["make_grid", "save_grid", "save_png", "to_uint8"]


def make_grid(images: np.ndarray, rows: int, cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile images uint8 [rows·cols, H, W, C] row-major into one uint8 [H', W', C] image with
    `pad` pixels of `fill` between and around the tiles. Fewer images leave blank tiles."""
    images = np.asarray(images)
    require(images.ndim == 4 and images.dtype == np.uint8,
            f"a grid needs uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    require(len(images) <= rows * cols, f"{len(images)} images do not fit a {rows}x{cols} grid")
    _, h, w, c = images.shape
    grid = np.full((pad + rows * (h + pad), pad + cols * (w + pad), c), fill, dtype=np.uint8)
    for k, img in enumerate(images):
        r, q = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = img
    return grid


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write one uint8 [H, W, C] (C = 1 or 3) image as PNG, creating the folder."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(arr).save(path)
    return path


def save_grid(path: str | Path, images: np.ndarray, rows: int, cols: int, pad: int = 2) -> Path:
    """make_grid + save_png; grayscale stays one channel."""
    return save_png(path, make_grid(images, rows, cols, pad))
