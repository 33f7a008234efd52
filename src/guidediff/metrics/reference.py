"""Reference feature statistics of real Fashion-MNIST images, computed once and cached.

Two reference sets: "test" (the 10k test images) and "train10k" (the first 10k training images
after a permutation with a fixed seed, the real-data floor's other half). Each cache entry is an
.npz (features, mean, covariance) plus a JSON sidecar holding the fingerprint of the network that
made the features and the sha256 of the .npz; an entry that fails any check is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from guidediff.errors import UsageError

REFERENCE_SETS = ("test", "train10k")
FLOOR_SEED = 0
FLOOR_SIZE = 10_000
CACHE_FORMAT = 1
# Tests set this to shrink the reference sets; it is part of the cache key, so it never mixes.
LIMIT_ENV = "GUIDEDIFF_REF_LIMIT"


@dataclass
class ReferenceStats:
    """Features float32 [N, D] (None when not kept) and their Gaussian fit, float64."""

    name: str
    n: int
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None


def cache_dir() -> Path:
    """$GUIDEDIFF_CACHE_DIR/reference, else the user cache ($XDG_CACHE_HOME/guidediff/reference)."""
    from guidediff.data.fmnist import cache_root

    root = os.environ.get("GUIDEDIFF_CACHE_DIR")
    return (Path(root).expanduser() if root else cache_root()) / "reference"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes).

    We hash the weights rather than the file that held them: the same weights give the same
    features whichever file (or none, for a network built in Python) they came from.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue  # a training counter; it does not change what the network computes
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def reference_images(name: str, data_dir: str | Path | None = None) -> np.ndarray:
    """The images uint8 [N, 28, 28, 1] of a reference set (first $GUIDEDIFF_REF_LIMIT if set)."""
    from guidediff.data.fmnist import load_fmnist

    if name == "test":
        images, _ = load_fmnist("test", data_dir)
    elif name == "train10k":
        images, _ = load_fmnist("train", data_dir)
        # Fixed-seed permutation: the floor's 10k training images are the same on every machine.
        images = images[np.random.default_rng(FLOOR_SEED).permutation(len(images))[:FLOOR_SIZE]]
    else:
        raise UsageError(f"unknown reference set {name!r}; choose one of {', '.join(REFERENCE_SETS)}")
    limit = os.environ.get(LIMIT_ENV)
    if limit:
        images = images[:int(limit)]
    return images[..., None]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[str], None], suffix: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    # Through a file object: np.savez given a name would append ".npz" to the temporary name.
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_entry(npz: Path, sidecar: Path, expect: dict, keep_features: bool) -> ReferenceStats | str:
    """The cached statistics, or a string saying why the entry cannot be used."""
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable sidecar: {type(exc).__name__}"
    for key, value in expect.items():
        if meta.get(key) != value:
            return f"sidecar {key} is {meta.get(key)!r}, expected {value!r}"
    if meta.get("npz_sha256") != _sha256_file(npz):
        return "npz does not match the sha256 in its sidecar"
    try:
        with np.load(npz, allow_pickle=False) as z:
            mu, sigma = z["mu"], z["sigma"]
            features = z["features"] if keep_features else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return f"unreadable npz: {type(exc).__name__}"
    d, n = expect["dim"], expect["n"]
    if mu.shape != (d,) or sigma.shape != (d, d) or (keep_features and features.shape != (n, d)):
        return "arrays have the wrong shapes"
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        return "non-finite statistics"
    return ReferenceStats(expect["ref"], n, mu, sigma, features)


def folder_reference(root: str | Path, resolution: int, channels: int) -> dict[str, np.ndarray]:
    """A user's image folder as two reference sets, {"ref": half A, "floor": half B}: a fixed-seed
    split of all its images. Samples are compared with half A; FID(B, A) is the real-data floor."""
    from guidediff.data.imagefolder import load_image_folder

    images, _, _ = load_image_folder(root, resolution, channels)
    if len(images) < 8:
        raise UsageError(f"the reference folder {root} holds {len(images)} images; it needs at least 8 (two "
                         "halves of at least 4)")
    order = np.random.default_rng(FLOOR_SEED).permutation(len(images))
    half = len(images) // 2
    return {"ref": images[order[:half]], "floor": images[order[half:2 * half]]}


def images_fingerprint(images: np.ndarray) -> str:
    """sha256 of an image array (shape and bytes): the cache key of a folder's reference set."""
    h = hashlib.sha256(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def cached_reference(name: str, fingerprint: str, tag: str, compute: Callable[[np.ndarray], np.ndarray],
                     keep_features: bool = True, data_dir: str | Path | None = None,
                     images: np.ndarray | None = None) -> ReferenceStats:
    """Statistics of reference set `name` under the feature map `compute` (named `tag`, with
    weights `fingerprint`), from the cache when a valid entry exists, else computed and stored.
    ``images`` gives the set itself (a user's folder); `name` then names it and keys the cache,
    together with the images' own fingerprint."""
    from guidediff import __version__
    from guidediff.metrics.fid import fit_gaussian

    if images is None:
        images = reference_images(name, data_dir)
        what = f"Fashion-MNIST {name}"
    else:
        what = name
        name = f"{name.rsplit('/', 1)[-1]}-{images_fingerprint(images)[:12]}"
    n = len(images)
    folder = cache_dir()
    stem = f"{tag}-{name}-n{n}-{fingerprint[:16]}"
    npz, sidecar = folder / f"{stem}.npz", folder / f"{stem}.json"
    expect = {"format": CACHE_FORMAT, "tag": tag, "ref": name, "n": n, "weights_sha256": fingerprint,
              "keep_features": keep_features}
    if npz.is_file() and sidecar.is_file():
        try:
            dim = int(json.loads(sidecar.read_text()).get("dim", -1))
        except (OSError, ValueError, TypeError):
            dim = -1
        got = _read_entry(npz, sidecar, {**expect, "dim": dim}, keep_features)
        if isinstance(got, ReferenceStats):
            return got
        warnings.warn(f"reference cache {npz} is unusable ({got}); rebuilding it", stacklevel=2)
    elif npz.is_file() or sidecar.is_file():
        warnings.warn(f"reference cache {npz} is incomplete (npz or sidecar missing); rebuilding it",
                      stacklevel=2)

    print(f"computing {tag} reference statistics of {what} ({n} images); cached in {folder}",
          file=sys.stderr)
    features = compute(images)
    mu, sigma = fit_gaussian(features)
    stats = ReferenceStats(name, n, mu, sigma, features.astype(np.float32) if keep_features else None)
    arrays = {"mu": mu, "sigma": sigma}
    if keep_features:
        arrays["features"] = stats.features
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(npz, lambda tmp: _savez(tmp, arrays), ".npz")
        meta = {**expect, "dim": int(mu.shape[0]), "npz_sha256": _sha256_file(npz), "guidediff": __version__,
                "floor_seed": FLOOR_SEED}
        _atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)), ".json")
    except OSError as exc:
        warnings.warn(f"could not write the reference cache under {folder} ({exc}); statistics will be "
                      "recomputed next time (set GUIDEDIFF_CACHE_DIR to a writable folder)", stacklevel=2)
    return stats


def classifier_reference(name: str, classifier: torch.nn.Module, device: str | torch.device = "cpu",
                         data_dir: str | Path | None = None, batch_size: int = 1000,
                         images: np.ndarray | None = None) -> ReferenceStats:
    """Reference statistics under the evaluation classifier's penultimate features (of a
    Fashion-MNIST set by name, or of ``images``)."""
    from guidediff.metrics.features import extract

    return cached_reference(name, weights_fingerprint(classifier), "fmnist-classifier",
                            lambda images: extract(images, classifier, batch_size, device)[0],
                            keep_features=True, data_dir=data_dir, images=images)
