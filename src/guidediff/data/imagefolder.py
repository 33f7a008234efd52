"""A user's own images: root/<class>/*.png|jpg, resized and centre-cropped to a square.

Decoded arrays are cached as .npz in the user cache, keyed by the folder's file list, sizes and
mtimes and by the resolution and channels, so a second run starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from guidediff.data.fmnist import cache_root
from guidediff.errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def scan_image_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, their class indices (sorted sub-folder names → 0..K-1) and the class names."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"image folder {root} does not exist or is not a folder; pass a folder "
                         "holding one sub-folder of images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = "images" if _list_images(root) else "nothing"
        raise UsageError(f"image folder {root} has no class sub-folders (it holds {loose}); put the "
                         "images in one sub-folder per class, e.g. root/cat/*.png (a single "
                         "sub-folder for unlabelled data)")
    paths: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(class_dirs):
        found = _list_images(folder)
        if not found:
            raise UsageError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                             "add images to it or remove it")
        paths += found
        labels += [index] * len(found)
    return paths, np.asarray(labels, dtype=np.int64), [p.name for p in class_dirs]


def load_image(path: str | Path, resolution: int, channels: int) -> np.ndarray:
    """One image as uint8 [R, R, C]: short side resized to R, centre square kept (one resampling)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        # JPEG can decode at 1/2, 1/4, 1/8 scale for free; draft never goes below the asked size.
        img.draft("RGB" if channels == 3 else "L", (resolution, resolution))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels have arbitrary colours underneath; show them on white instead.
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB" if channels == 3 else "L")
        w, h = img.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(resolution, resolution, channels)


def _try_load(path: Path, resolution: int, channels: int) -> np.ndarray | str:
    from PIL import Image

    try:
        return load_image(path, resolution, channels)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        # Pillow reports bad files through several exception types; all mean "cannot decode".
        return f"{type(exc).__name__}: {exc}"


def _cache_file(root: Path, paths: list[Path], resolution: int, channels: int, skip_bad: bool) -> Path:
    h = hashlib.sha1()
    h.update(json.dumps([str(root.resolve()), resolution, channels, skip_bad]).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return cache_root() / "imagefolder" / f"{h.hexdigest()[:24]}.npz"


def _warn_skipped(root: Path, skipped: list[str]) -> None:
    warnings.warn(f"skipped {len(skipped)} unreadable image(s) under {root} (first: {skipped[0]})",
                  stacklevel=3)


def load_image_folder(root: str | Path, resolution: int, channels: int, skip_bad: bool = False,
                      cache: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """images uint8 [N, R, R, C], labels int64 [N], class_names from root/<class>/<image> files.

    An unreadable file is an error naming it, unless skip_bad, which drops it and warns once.
    """
    if not isinstance(resolution, int) or resolution < 1:
        raise UsageError(f"resolution must be a positive integer, got {resolution!r}")
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    root = Path(root).expanduser()
    paths, labels, class_names = scan_image_folder(root)

    cache_file = _cache_file(root, paths, resolution, channels, skip_bad) if cache else None
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                images, labels, skipped = z["images"], z["labels"], [str(s) for s in z["skipped"]]
            if skipped:
                _warn_skipped(root, skipped)
            return images, labels, class_names
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below

    workers = min(8, os.cpu_count() or 1)
    # Pillow releases the GIL while decoding and resampling, so threads do scale here.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: _try_load(p, resolution, channels), paths, chunksize=64))
    bad = [(p, r) for p, r in zip(paths, results) if isinstance(r, str)]
    if bad and not skip_bad:
        path, why = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(f"cannot read image {path}{more}: {why}; remove it, or pass --skip-bad-images "
                         "(skip_bad=True) to leave unreadable files out")
    keep = np.array([not isinstance(r, str) for r in results], dtype=bool)
    if not keep.any():
        raise UsageError(f"none of the {len(paths)} images under {root} could be read; check the files")
    images = np.stack([r for r in results if not isinstance(r, str)])
    labels = labels[keep]
    skipped = [str(p) for p, _ in bad]
    if skipped:
        _warn_skipped(root, skipped)

    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, images=images, labels=labels, skipped=np.array(skipped, dtype=str))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only home only costs the decode next time
    return images, labels, class_names
