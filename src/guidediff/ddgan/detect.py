"""Is a path a DDGAN run, checkpoint or exported generator? Decided from the small JSON that
`guidediff train-ddgan` writes beside the weights (state.json "kind", the model file's
safetensors metadata "format", config.json's sections), never by loading tensors, so
`guidediff sample` can route a path to the right loader before it reads anything large."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def is_ddgan_source(source: str | Path) -> bool:
    """True for a `guidediff train-ddgan` run dir, a checkpoint dir of one, its checkpoints/ dir, or
    an exported DDGAN model.safetensors. A name that is not an existing path (a shipped model name
    such as 'fmnist-cfg') is never DDGAN; unreadable files answer False and are left to the loader
    that reports them."""
    from guidediff.checkpoint import STATE_FILE, latest_checkpoint
    from guidediff.ddgan.train import CHECKPOINTS, CONFIG_FILE, KIND, MODEL_FILE, MODEL_FORMAT

    path = Path(source).expanduser()
    if path.is_file():
        return _model_format(path) == MODEL_FORMAT
    if not path.is_dir():
        return False
    if (path / STATE_FILE).is_file():
        return _state_kind(path / STATE_FILE) == KIND
    for root in (path / CHECKPOINTS, path):
        ckpt = latest_checkpoint(root) if root.is_dir() else None
        if ckpt is not None:
            return _state_kind(ckpt / STATE_FILE) == KIND
    if (path / MODEL_FILE).is_file():
        return _model_format(path / MODEL_FILE) == MODEL_FORMAT
    # a run stopped before its first checkpoint: only config.json says what it is
    config = _read_json(path / CONFIG_FILE)
    return isinstance(config, dict) and "generator" in config and "discriminator" in config


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _state_kind(path: Path) -> str | None:
    state = _read_json(path)
    return state.get("kind") if isinstance(state, dict) else None


def _model_format(path: Path) -> str | None:
    """The "format" entry of a safetensors file's metadata; None for anything else."""
    from guidediff.checkpoint import safetensors_header
    from guidediff.errors import UsageError

    if path.suffix != ".safetensors":
        return None
    try:
        meta = safetensors_header(path).get("__metadata__")
    except UsageError:
        return None
    return meta.get("format") if isinstance(meta, dict) else None
