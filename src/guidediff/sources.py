"""What a model source holds: its tensors and Config. A source is a run or checkpoint directory of
`guidediff train`, an exported .safetensors model, or a shipped model name such as 'fmnist-cfg'
(guidediff.models). guidediff.loading builds the network from them."""

from __future__ import annotations

from pathlib import Path

import torch

from guidediff.checkpoint import TENSOR_FILES, load_checkpoint, read_model_file
from guidediff.config import Config
from guidediff.errors import UsageError, require


def load_weights(source: str | Path, weights: str = "ema") -> tuple[dict[str, torch.Tensor], Config, str]:
    """(tensors, Config, where they came from) for a checkpoint or run directory, an exported
    .safetensors model, or a shipped model name such as 'fmnist-cfg'."""
    from guidediff import models

    require(weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(source).expanduser()
    if not path.exists() and models.is_shipped_name(str(source)):
        path = models.shipped_path(str(source))
    from guidediff.ddgan.detect import is_ddgan_source

    if is_ddgan_source(path):
        raise UsageError(f"{source} is a DDGAN generator (guidediff train-ddgan), not a diffusion model; sample it "
                         f"with `guidediff sample {source}`, or pass a model of guidediff train")
    if path.is_dir():
        ck = load_checkpoint(path, parts=(weights,))
        return ck.tensors[weights], ck.config, str(ck.path / TENSOR_FILES[weights])
    if path.is_file() and path.suffix == ".safetensors":
        require(weights == "ema", f"{path} is an exported model with one set of weights (the EMA ones); --weights "
                                  "model needs the run or checkpoint directory it came from")
        tensors, meta = read_model_file(path)
        return tensors, Config.from_dict(meta["config"], source=str(path)), str(path)
    if path.exists():
        raise UsageError(f"{path} is neither a checkpoint directory nor a .safetensors model; pass one of those "
                         f"or a shipped model name ({', '.join(models.SHIPPED)})")
    raise UsageError(f"{source} does not exist and is not a shipped model name; pass a checkpoint or run "
                     f"directory, a .safetensors model, or one of: {', '.join(models.SHIPPED)}")
