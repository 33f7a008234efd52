"""Shared by test_train, test_sample_cli and test_ddp: a tiny config and a tiny image set."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

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


_TORCHRUN = Path(sys.executable).parent / "torchrun"
requires_torchrun = pytest.mark.skipif(shutil.which("torchrun", path=str(_TORCHRUN.parent)) is None,
                                       reason="torchrun not installed beside this Python")


def torchrun(processes: int = 2) -> list[str]:
    """The launch prefix for ``processes`` local CPU processes (gloo) on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(_TORCHRUN), "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1", "--master_port",
            str(port)]
