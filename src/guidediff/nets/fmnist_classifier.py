"""The evaluation classifier: a compact VGG-style CNN for Fashion-MNIST, and its weights file.

Its softmax gives IS-FMNIST and CAS; its penultimate features (global average pool of the last
conv block, 256-d by default, non-negative like Inception's pool3) give FID-FMNIST, KID and
precision/recall. Weights live in a safetensors file whose metadata carries the architecture
config, so loading needs only the path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from guidediff.errors import UsageError

FORMAT = "guidediff.fmnist_classifier/1"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "fmnist_classifier.safetensors"


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # bias is redundant before BatchNorm
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FmnistClassifier(nn.Module):
    """Two 3x3 conv-BN-ReLU layers per stage, 2x2 max-pool between stages, a widening conv to
    `feature_dim`, global average pool (the features), dropout and one linear layer (the logits).

    Defaults: widths (32, 64, 128), 256 features, 0.58 M parameters (2.3 MiB as float32).
    Input: x float [B, in_channels, H, W] in [-1, 1] (Fashion-MNIST: 1 x 28 x 28; the global pool
    takes any size, e.g. a user's 64 x 64 RGB folder with in_channels = 3).
    """

    def __init__(self, widths: tuple[int, ...] | list[int] = (32, 64, 128), feature_dim: int = 256,
                 num_classes: int = 10, dropout: float = 0.2, in_channels: int = 1):
        super().__init__()
        self.in_channels = int(in_channels)
        self.widths = tuple(int(w) for w in widths)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.dropout_p = float(dropout)
        layers: list[nn.Module] = []
        c_in = self.in_channels
        for i, width in enumerate(self.widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn_relu(c_in, width) + _conv_bn_relu(width, width)
            c_in = width
        layers += _conv_bn_relu(c_in, self.feature_dim)
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(self.dropout_p)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def config(self) -> dict:
        """The constructor arguments, JSON-serialisable (stored in the weights file)."""
        return {"widths": list(self.widths), "feature_dim": self.feature_dim,
                "num_classes": self.num_classes, "dropout": self.dropout_p, "in_channels": self.in_channels}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def save_classifier(model: FmnistClassifier, path: str | Path, **info) -> Path:
    """Write weights + metadata (config JSON and `info` values as strings) atomically to `path`."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config()), "torch": torch.__version__}
    metadata.update({k: str(v) for k, v in info.items()})
    # Same folder as the target, so os.replace is an atomic rename: a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; weights are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a classifier file (UsageError if it is not one)."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad header
        raise UsageError(f"cannot read classifier weights {path} ({type(exc).__name__}); "
                         "retrain it with `guidediff train-classifier --out PATH`") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UsageError(f"{path} is not a guidediff Fashion-MNIST classifier file (no '{FORMAT}' "
                         "metadata); train one with `guidediff train-classifier --out PATH`")
    return meta


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> FmnistClassifier:
    """Rebuild the classifier from a weights file written by save_classifier, in eval mode."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"classifier weights {path} do not exist; check the path, or train one with "
                         "`guidediff train-classifier --out PATH`")
    meta = read_metadata(path)
    try:
        model = FmnistClassifier(**json.loads(meta["config"]))
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise UsageError(f"classifier weights {path} do not match their stored config ({first}); "
                         "retrain with `guidediff train-classifier --out PATH`") from None
    return model.to(device).eval()


def load_eval_classifier(path: str | Path | None = None,
                         device: str | torch.device = "cpu") -> FmnistClassifier:
    """The evaluation classifier: `path`, or the weights shipped with guidediff when None."""
    if path is None:
        if not SHIPPED_WEIGHTS.is_file():
            raise UsageError(f"the shipped evaluation classifier {SHIPPED_WEIGHTS} is missing; train one "
                             "with `guidediff train-classifier --out fmnist_classifier.safetensors` and "
                             "pass --classifier fmnist_classifier.safetensors")
        path = SHIPPED_WEIGHTS
    return load_classifier(path, device)
