"""Read generated samples for evaluation: a sample-contract .npz or a folder of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from guidediff.data.imagefolder import IMAGE_EXTENSIONS
from guidediff.errors import UsageError


def _check_arrays(x: np.ndarray, y: np.ndarray | None, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) == 0:
        hint = "; 2-D point samples are evaluated by `guidediff toy`" if x.ndim == 2 else ""
        raise UsageError(f"{source}: x must be uint8 images [N, H, W, C] with N >= 1, got {x.dtype} "
                         f"{list(x.shape)}{hint}")
    if x.ndim == 3:
        x = x[..., None]
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise UsageError(f"{source}: y must be int64 class labels [N] with N = {len(x)} (−1 for "
                             f"unconditional), got {y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    return x, y


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror}); pass a readable sample file") from None
    if not is_zip:
        raise UsageError(f"cannot read {path} as .npz: it is not a zip archive (.npz files are); pass a samples.npz written by "
                         "`guidediff sample` or a folder of images")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise UsageError(f"{path} has no 'x' array (it holds {sorted(z.files)}); a sample file "
                                 "needs x uint8 [N, H, W, C] and optionally y int64 [N]")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy/zipfile raise many types for a bad file
        raise UsageError(f"cannot read {path} as .npz ({type(exc).__name__}: {exc}); pass a sample file "
                         "written by `guidediff sample`") from None
    return _check_arrays(x, y, str(path))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            gray = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for an undecodable file
        raise UsageError(f"cannot read image {path} ({type(exc).__name__}); remove or replace it") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _load_folder(root: Path) -> tuple[np.ndarray, np.ndarray | None]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _images_in(root)
    if subdirs and loose:
        raise UsageError(f"{root} mixes images and sub-folders; use either a flat folder of images "
                         "(unlabelled) or one sub-folder per class named by its index (0, 1, ...)")
    if subdirs:
        bad = [d.name for d in subdirs if not d.name.isdigit()]
        if bad:
            raise UsageError(f"class sub-folders of {root} must be named by class index (0, 1, ...), got "
                             f"{bad[0]!r}; rename them so the labels match the classifier's classes")
        paths, labels = [], []
        for d in subdirs:
            found = _images_in(d)
            paths += found
            labels += [int(d.name)] * len(found)
        y = np.asarray(labels, dtype=np.int64)
    else:
        paths, y = loose, None
    if not paths:
        raise UsageError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    images = [_read_image(p) for p in paths]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UsageError(f"images under {root} differ in size or channels ({sorted(shapes)[:3]}); "
                         "samples must all have one shape")
    return _check_arrays(np.stack(images), y, str(root))


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images uint8 [N, H, W, C] and labels int64 [N] (or None) from a .npz or an image folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise UsageError(f"samples {path} do not exist; pass a .npz written by `guidediff sample` or a "
                         "folder of images")
    return _load_npz(path)
