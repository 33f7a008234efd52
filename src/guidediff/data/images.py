"""Image datasets as arrays and tensors: the one entry point the training and eval code call.

Arrays stay uint8 [N, H, W, C] (the sample-file layout); tensors are float [N, C, H, W] in [-1, 1]
with x = v / 127.5 − 1, the convention used across guidediff.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from guidediff.errors import UsageError

DATASET_NAMES = ("fmnist", "stacked-fmnist")
_ALIASES = {"fashion-mnist": "fmnist", "fashion_mnist": "fmnist", "stacked_fmnist": "stacked-fmnist"}
_STACKED_SEEDS = {"train": 0, "test": 1}


@dataclass
class DatasetArrays:
    """A labelled image set: images uint8 [N, H, W, C], labels int64 [N] in 0..num_classes−1."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    num_classes: int

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])


def _check_fixed(name: str, resolution: int | None, channels: int | None, res: int, ch: int) -> None:
    if resolution not in (None, res) or channels not in (None, ch):
        raise UsageError(f"dataset {name} is {res}x{res} with {ch} channel(s), but resolution={resolution} "
                         f"and channels={channels} were asked; set them to {res} and {ch}, or leave them unset")


def _folder_for_split(root: Path, split: str) -> Path:
    """root/<split> when the user keeps splits as sub-folders, else root itself for 'train'."""
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise UsageError(f"image folder {root} has no {split}/ sub-folder; add one (root/{split}/<class>/...) "
                     f"or pass that split's folder itself as the dataset")


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 resolution: int | None = None, channels: int | None = None,
                 skip_bad: bool = False) -> DatasetArrays:
    """Load a dataset by name ('fmnist', 'stacked-fmnist') or by the path of an image folder."""
    from guidediff.data.fmnist import FMNIST_CLASSES, load_fmnist

    key = _ALIASES.get(name, name)
    if key == "fmnist":
        _check_fixed(name, resolution, channels, 28, 1)
        images, labels = load_fmnist(split, data_dir)
        return DatasetArrays(images[..., None], labels, list(FMNIST_CLASSES), len(FMNIST_CLASSES))
    if key == "stacked-fmnist":
        from guidediff.data.stacked import NUM_MODES, make_stacked_fmnist

        _check_fixed(name, resolution, channels, 28, 3)
        images, labels = load_fmnist(split, data_dir)
        # One fixed draw per split, the size of the underlying split, so every run sees the same set.
        x, modes = make_stacked_fmnist(images, labels, len(images), seed=_STACKED_SEEDS[split])
        return DatasetArrays(x, modes, [f"{m:03d}" for m in range(NUM_MODES)], NUM_MODES)

    root = Path(name).expanduser()
    if root.is_dir():
        from guidediff.data.imagefolder import load_image_folder

        if resolution is None or channels is None:
            raise UsageError(f"image folder {root} needs a resolution and channels (1 or 3); set both "
                             "in the config")
        images, labels, class_names = load_image_folder(_folder_for_split(root, split), resolution,
                                                        channels, skip_bad=skip_bad)
        return DatasetArrays(images, labels, class_names, len(class_names))
    if "/" in name or name.startswith(".") or name.startswith("~"):
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise UsageError(f"image folder {name} {state}; check the path")
    raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)} or the path "
                     "of a folder with one sub-folder of images per class")


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, C] (or [N, H, W]) → float32 [N, C, H, W] in [-1, 1], x = v / 127.5 − 1."""
    # copy: cached arrays are read-only, which torch.from_numpy warns about.
    t = torch.from_numpy(np.array(images, copy=True)) if isinstance(images, np.ndarray) else images
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] → uint8 [N, H, W, C] (rounded, clipped): the sample-file layout."""
    v = ((x.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return v.permute(0, 2, 3, 1).cpu().numpy()


def to_tensor_dataset(images: np.ndarray, labels: np.ndarray, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole set as tensors on `device`: x [N, C, H, W] in [-1, 1] and labels int64 [N].

    Fashion-MNIST is 47 MB as uint8, so a GPU holds it whole and the training loop indexes random
    batches directly, with no DataLoader in the way. The uint8 array travels, then converts there.
    """
    if len(images) != len(labels):
        raise UsageError(f"{len(images)} images but {len(labels)} labels; they must match")
    u8 = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).to(device)
    x = to_float(u8).to(dtype)
    y = torch.from_numpy(np.array(labels, dtype=np.int64, copy=True)).to(device)
    return x, y


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image of a batch [B, C, H, W] left-right with probability p (a new tensor)."""
    rng_device = generator.device if generator is not None else x.device
    flip = torch.rand(x.shape[0], generator=generator, device=rng_device).to(x.device) < p
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset of (x float32 [C, H, W] in [-1, 1], label int64) for a DataLoader."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, hflip: bool = False):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
            raise UsageError(f"ImageDataset needs uint8 images [N, H, W(, C)] and N labels; got "
                             f"{images.dtype} {images.shape} and {len(labels)} labels")
        self.images = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), order="C", copy=True))
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].float().div_(127.5).sub_(1.0)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]
