"""Fashion-MNIST from the original idx files: find them, fetch them, parse them.

Where the files are looked for, in order: an explicit directory, $GUIDEDIFF_DATA_DIR, the Debian
package's /usr/share/datasets/fashion-mnist, and the user cache. Only when none has them is the
official mirror tried; offline, the error names the apt package that installs them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from guidediff.errors import UsageError

FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# md5 of the official compressed files (Fashion-MNIST README). Debian recompresses them, so only
# downloads are checked against these; files found on disk are checked by their idx structure.
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "GUIDEDIFF_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 15.0

# Layouts other tools leave behind (the upstream git repo, torchvision's raw/ folder).
_SUBDIRS = ("", "fashion-mnist", "fashion", "data/fashion", "FashionMNIST/raw", "raw")

# idx type byte -> big-endian numpy dtype (the idx format as defined for MNIST).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def cache_root() -> Path:
    """guidediff's cache folder: $XDG_CACHE_HOME/guidediff, else ~/.cache/guidediff."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "guidediff"


def _corrupt(path: Path, what: str) -> UsageError:
    return UsageError(f"{path} is corrupt or truncated ({what}); delete it and download it again "
                      "(or reinstall with `sudo apt-get install --reinstall dataset-fashion-mnist`)")


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Parse an idx file (gzip-compressed if its name ends in .gz) into a native-endian array.

    The header is 2 zero bytes, a type byte, a rank byte and one big-endian uint32 per dimension;
    the payload must be exactly the product of the dimensions, so truncation is always caught.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises EOFError on a cut-off stream and BadGzipFile (an OSError) on garbage.
        if isinstance(exc, FileNotFoundError):
            raise UsageError(f"{path} does not exist; check the data directory") from None
        raise _corrupt(path, type(exc).__name__) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise _corrupt(path, "bad idx magic number")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise _corrupt(path, f"idx rank {ndim}, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, "header cut short")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise _corrupt(path, f"{len(raw) - header} data bytes, header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _resolve(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete_folder(base: Path) -> Path | None:
    """The folder at or under `base` that holds all four files, in either .gz or raw form."""
    for sub in _SUBDIRS:
        folder = base / sub if sub else base
        if all(_resolve(folder, stem) for pair in FILES.values() for stem in pair):
            return folder
    return None


def candidate_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for Fashion-MNIST, in order (the cache last: downloads land there)."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs += [SYSTEM_DIR, cache_root() / "fashion-mnist"]
    return dirs


def _fetch(url: str, dest: Path) -> None:
    """Download url to dest (the tests replace this to simulate a machine without internet)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_fmnist(dest: Path) -> Path:
    """Fetch the four official files into dest, checking each md5; raise OSError when offline."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in MD5.items():
        target = dest / name
        if target.is_file() and _md5(target) == md5:
            continue
        print(f"downloading {MIRROR}{name} to {dest}", file=sys.stderr)
        part = target.with_name(name + ".part")
        try:
            _fetch(MIRROR + name, part)
            got = _md5(part)
            if got != md5:
                raise UsageError(f"downloaded {name} has md5 {got}, expected {md5}; retry later, or "
                                 "install it with `sudo apt-get install dataset-fashion-mnist`")
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return dest


def find_fmnist_dir(data_dir: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST idx files, downloading them if need be."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        state = "is a file, not a folder" if Path(data_dir).expanduser().exists() else "does not exist"
        raise UsageError(f"data directory {data_dir} {state}; pass --data-dir DIR holding "
                         "the four Fashion-MNIST idx .gz files")
    # a folder the user names is the only place looked at (a download lands there): falling back
    # to another copy would hide a wrong --data-dir
    dirs = [Path(data_dir).expanduser()] if data_dir is not None else candidate_dirs()
    for base in dirs:
        folder = _complete_folder(base)
        if folder is not None:
            return folder
    cache = dirs[-1]
    try:
        download_fmnist(cache)
    except (OSError, urllib.error.URLError, TimeoutError):
        searched = ", ".join(str(d) for d in dirs)
        raise UsageError(f"Fashion-MNIST not found in {searched} (and it could not be downloaded); "
                         "install it with `sudo apt-get install dataset-fashion-mnist`, or pass "
                         "--data-dir DIR holding the four idx .gz files") from None
    return cache


@functools.lru_cache(maxsize=4)
def _load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (_resolve(folder, stem) for stem in FILES[split])
    images = read_idx(image_file, expected_ndim=3)
    labels = read_idx(label_file, expected_ndim=1)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise _corrupt(image_file, f"{images.dtype} images of shape {images.shape[1:]}, expected uint8 28x28")
    if len(labels) != len(images):
        raise _corrupt(label_file, f"{len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() >= len(FMNIST_CLASSES):
        raise _corrupt(label_file, f"label {labels.max()} out of range 0..9")
    labels = labels.astype(np.int64)
    # Shared between callers through the cache, so nobody may edit them in place.
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_fmnist(split: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 [N, 28, 28] and labels int64 [N] (read-only, cached in-process)."""
    if split not in FILES:
        raise UsageError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    return _load_split(find_fmnist_dir(data_dir).resolve(), split)
