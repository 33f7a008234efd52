"""Evaluation features and class probabilities of uint8 images (Fashion-MNIST or a user's folder)."""

from __future__ import annotations

import numpy as np
import torch

from guidediff.errors import UsageError
from guidediff.runtime import resolve_device


def check_fmnist_images(images: np.ndarray) -> np.ndarray:
    """Validate and return images as uint8 [N, 28, 28, 1] (an [N, 28, 28] array is accepted too)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (28, 28, 1) or len(images) == 0:
        hint = ("; RGB 3-channel images need the Inception path (--inception-weights PATH)"
                if images.ndim == 4 and images.shape[-1] == 3 else "")
        raise UsageError(f"evaluation images must be uint8 [N, 28, 28, 1] with N >= 1 (grayscale "
                         f"Fashion-MNIST size), got {images.dtype} {list(images.shape)}{hint}")
    return images


def check_images(images: np.ndarray, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Validate and return images as uint8 [N, H, W, C]; with ``shape`` = (H, W, C) they must match it."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0 or images.shape[-1] not in (1, 3):
        raise UsageError(f"evaluation images must be uint8 [N, H, W, C] with C = 1 or 3 and N >= 1, got "
                         f"{images.dtype} {list(images.shape)}")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise UsageError(f"the samples are {list(images.shape[1:])} (H, W, C) but the reference images are "
                         f"{list(shape)}; sample at the reference's size or pass a reference of the samples' size")
    return images


@torch.inference_mode()
def extract(images: np.ndarray, classifier: torch.nn.Module, batch_size: int = 1000,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features float64 [N, D] and softmax probabilities float64 [N, K] of `images`
    (uint8 [N, H, W, C] of the size and channels the classifier was trained on).

    `classifier` needs `features(x)` and a linear `head`-style `forward(x)`; it runs in eval mode
    and in float32 (no autocast: the statistics should not depend on the device's low precision).
    """
    from guidediff.data.images import to_float

    images = check_images(images)
    channels = getattr(classifier, "in_channels", images.shape[-1])
    if images.shape[-1] != channels:
        raise UsageError(f"the evaluation classifier takes {channels}-channel images but these have "
                         f"{images.shape[-1]}; pass a classifier trained on such images (`guidediff "
                         "train-classifier --data FOLDER`, then --classifier) or use the Inception path "
                         "(--inception-weights PATH)")
    device = resolve_device(device)
    was_training = classifier.training
    classifier.eval()
    feats, probs = [], []
    try:
        for start in range(0, len(images), batch_size):
            # uint8 travels to the device (4x fewer bytes), then converts there
            x = to_float(torch.from_numpy(np.array(images[start:start + batch_size], copy=True)).to(device))
            f = classifier.features(x)
            logits = classifier.head(f) if hasattr(classifier, "head") else classifier(x)
            feats.append(f.double().cpu())
            probs.append(torch.softmax(logits.double(), dim=1).cpu())
    finally:
        classifier.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()
