"""Shipped models: names usable wherever a checkpoint path is accepted (``guidediff sample fmnist-cfg``).

Each is an exported model (see guidediff.checkpoint.export_model) stored inside the package as
``guidediff/weights/<name>.safetensors`` with ``<name>.json`` beside it: the config, the commands
and the commit that trained it, and its training time.
"""

from __future__ import annotations

from pathlib import Path

from guidediff.errors import UsageError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# name -> (file inside WEIGHTS_DIR, how it was made)
SHIPPED: dict[str, tuple[str, str]] = {
    "fmnist-cfg": ("fmnist-cfg.safetensors",
                   "classifier-free guidance on Fashion-MNIST, configs/fmnist_cfg.toml (EMA weights)"),
}


def is_shipped_name(name: str) -> bool:
    return name in SHIPPED


def shipped_path(name: str) -> Path:
    """The file of a shipped model; a UsageError if the name is unknown or the file is not installed."""
    if name not in SHIPPED:
        raise UsageError(f"unknown shipped model {name!r}; choose one of {', '.join(SHIPPED)} or pass a checkpoint")
    path = WEIGHTS_DIR / SHIPPED[name][0]
    if not path.is_file():
        raise UsageError(f"the shipped model {name} is not in this install (expected {path}); reinstall guidediff "
                         f"from a release that includes it, or train one with `guidediff train --config "
                         f"configs/fmnist_cfg.toml` and pass its run directory")
    return path


def available() -> dict[str, Path]:
    """Shipped models whose files are present."""
    return {name: WEIGHTS_DIR / f for name, (f, _) in SHIPPED.items() if (WEIGHTS_DIR / f).is_file()}
