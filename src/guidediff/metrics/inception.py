"""Standard FID features: the TF-2015 Inception v3 used by FID, pool3 (2048-d), from a local file.

The architecture is Inception v3 (Szegedy et al. 2016) with the quirks of the TensorFlow graph
that FID was defined on: average pools ignore the zero padding, and the last block pools its side
branch with a max instead of an average. Parameter names follow the state dict of pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth`, so that file loads as is. It is read with
torch.load(weights_only=True), the safe loader that only rebuilds tensors and containers and never
runs code from the file; a .safetensors conversion is accepted too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guidediff.errors import UsageError

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
FEATURE_DIM = 2048


class _ConvBN(nn.Module):
    """conv (no bias) → BatchNorm (eps 1e-3, as in the TF graph) → ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME-padded average divides by the number of real pixels only.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _run(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class _Mixed35(nn.Module):
    """35×35 block: 1x1 | 1x1→5x5 | 1x1→3x3→3x3 | avg-pool→1x1."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 64, 1)
        self.branch5x5_1 = _ConvBN(c_in, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _run(x, self.branch5x5_1, self.branch5x5_2),
            _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class _Reduce35(nn.Module):
    """35→17 grid reduction: 3x3/2 | 1x1→3x3→3x3/2 | max-pool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = _ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _Mixed17(nn.Module):
    """17×17 block with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(c_in, 192, 1)
        self.branch7x7_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _run(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            _run(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                 self.branch7x7dbl_5),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class _Reduce17(nn.Module):
    """17→8 grid reduction: 1x1→3x3/2 | 1x1→1x7→7x1→3x3/2 | max-pool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(c_in, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            _run(x, self.branch3x3_1, self.branch3x3_2),
            _run(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _Mixed8(nn.Module):
    """8×8 block with split 1x3 / 3x1 heads; `max_pool` marks the TF graph's last block."""

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(c_in, 320, 1)
        self.branch3x3_1 = _ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Inception v3 up to pool3: x [B, 3, 299, 299] in [-1, 1] → features [B, 2048]."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _Mixed35(192, 32)
        self.Mixed_5c = _Mixed35(256, 64)
        self.Mixed_5d = _Mixed35(288, 64)
        self.Mixed_6a = _Reduce35(288)
        self.Mixed_6b = _Mixed17(768, 128)
        self.Mixed_6c = _Mixed17(768, 160)
        self.Mixed_6d = _Mixed17(768, 160)
        self.Mixed_6e = _Mixed17(768, 192)
        self.Mixed_7a = _Reduce17(768)
        self.Mixed_7b = _Mixed8(1280, max_pool=False)
        self.Mixed_7c = _Mixed8(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _run(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _run(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                 self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        return x.mean(dim=(2, 3))


# In the file but not needed for pool3 features: the 1008-way logits (and aux head, if any).
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise UsageError(f"cannot read Inception weights {path} ({type(exc).__name__}); "
                             f"download them again from {WEIGHTS_URL}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        reason = " ".join(str(exc).split())[:160]
        raise UsageError(f"cannot read Inception weights {path} with the safe loader ({reason}); it must be "
                         f"a plain state dict such as {WEIGHTS_URL}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} is not a state dict of tensors; use the FID Inception weights {WEIGHTS_URL}")
    return state


def load_fid_inception(path: str | Path | None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception network with weights from `path` (.pth state dict or .safetensors)."""
    how = f"download {WEIGHTS_URL} and pass --inception-weights PATH"
    if path is None:
        raise UsageError(f"standard FID needs the Inception weights file; {how}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"Inception weights {path} do not exist; {how}")
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(_IGNORED_PREFIXES)}
    net = FIDInceptionV3()
    expected = net.state_dict()
    # Files saved before BatchNorm counted its batches have no num_batches_tracked; it is unused here.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UsageError(f"{path} is not the FID Inception state dict ({len(missing)} missing keys, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); use {WEIGHTS_URL}")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise UsageError(f"{path}: tensor {bad[0]} has shape {list(state[bad[0]].shape)}, expected "
                         f"{list(expected[bad[0]].shape)}; use the FID Inception weights {WEIGHTS_URL}")
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return net.to(device).eval()


@torch.inference_mode()
def inception_features(images: np.ndarray, net: FIDInceptionV3, batch_size: int = 50,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """pool3 features float64 [N, 2048] of uint8 images [N, H, W, C], C = 1 (repeated) or 3.

    Each image is scaled to [-1, 1] and resized bilinearly to 299×299 (no antialiasing), as the
    pytorch-fid reference pipeline does.
    """
    from guidediff.data.images import to_float

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise UsageError(f"Inception features need uint8 images [N, H, W, C] with C = 1 or 3, got "
                         f"{images.dtype} {list(images.shape)}")
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(torch.from_numpy(np.array(images[start:start + batch_size], copy=True)).to(device))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        out.append(net(x).double().cpu())
    return torch.cat(out).numpy()
