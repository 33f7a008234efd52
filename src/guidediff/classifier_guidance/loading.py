"""Loading a trained noisy classifier p_φ(c | z_λ, λ) and checking that its label set is the
diffusion model's (guidance asks p_φ for the model's class index)."""

from __future__ import annotations

from pathlib import Path

import torch

from guidediff.errors import UsageError, require


def load_noisy_classifier(source: str | Path, device: str | torch.device = "cpu", weights: str = "ema"):
    """(NoisyClassifier in eval mode, frozen, on ``device``; its Config) from a run or checkpoint
    directory or an exported .safetensors model. Only the path is needed: the config travels inside."""
    from guidediff.checkpoint import (
        TENSOR_FILES,
        check_state_dict,
        load_checkpoint,
        read_model_file,
    )
    from guidediff.config import Config
    from guidediff.classifier_guidance.network import NoisyClassifier, is_noisy_classifier_state

    require(weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        ck = load_checkpoint(path, parts=(weights,))
        tensors, config, where = ck.tensors[weights], ck.config, str(ck.path / TENSOR_FILES[weights])
    elif path.is_file() and path.suffix == ".safetensors":
        tensors, meta = read_model_file(path)
        config, where = Config.from_dict(meta["config"], source=str(path)), str(path)
    else:
        raise UsageError(f"noisy classifier {source} does not exist or is not a run/checkpoint directory or .safetensors "
                         "model; train one with guidediff train-noisy-classifier --config configs/fmnist_noisy_classifier.toml")
    if not is_noisy_classifier_state(tensors):
        raise UsageError(f"{where} holds a diffusion model, not a noisy classifier; pass the output of "
                         "guidediff train-noisy-classifier as --classifier")
    net = NoisyClassifier(config.model)
    check_state_dict(tensors, net.state_dict(), where)
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    return net.to(device).eval().requires_grad_(False), config
