"""Classifier guidance from a trained noisy classifier: load it, check its label set against the
diffusion model's, and turn it into the ∇_z log p_φ(c | z_λ) that ``guidance.classifier_guidance``
(score form) and ``guidance.classifier_mean_shift`` (ancestral mean form) take.

    clf, clf_config = load_noisy_classifier("runs/fmnist_noisy_classifier", device)
    check_label_set(clf.num_classes, model_config.model.num_classes, "runs/fmnist_noisy_classifier")
    grad = classifier_grad_log_prob(clf)
    guided = guidance.classifier_guidance(guidance.unconditional(net, 10), grad, scale=4.0)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from guidediff.errors import UsageError, require
from guidediff.guidance import GradLogProb, classifier_gradient


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
    from guidediff.nets.noisy_classifier import NoisyClassifier, is_noisy_classifier_state

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


def check_label_set(classifier_classes: int, model_classes: int, source: str = "the classifier") -> None:
    """UsageError unless the classifier predicts exactly the diffusion model's classes: guidance
    asks p_φ(c | z) for the model's class index c, which means nothing in another label set."""
    if classifier_classes != model_classes:
        raise UsageError(
            f"{source} predicts {classifier_classes} classes but the diffusion model has {model_classes}; "
            f"train the noisy classifier on the model's dataset (same label set)")


def classifier_grad_log_prob(classifier: torch.nn.Module, *, bf16: bool = False) -> GradLogProb:
    """∇_z log p_φ(c | z_λ, λ) by autograd through ``classifier.log_prob`` (float32 gradients;
    ``bf16`` runs the forward under CUDA autocast)."""
    device_type = next(classifier.parameters()).device.type

    def log_prob(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = classifier(z, lam)
        return torch.log_softmax(logits.float(), dim=1).gather(1, c.long()[:, None])[:, 0]

    grad = classifier_gradient(log_prob)

    def checked(z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        return grad(z, lam, c).to(z.dtype)

    return checked


@torch.no_grad()
def guide_accuracy(classifier: torch.nn.Module, images, labels, lam: float, *, batch_size: int = 1000,
                   seed: int = 0) -> dict:
    """How much the *guiding* classifier believes the samples: its accuracy on the asked class and
    mean p_φ(c | z) at λ (the clean end, λ_max), for uint8 samples [N, H, W, C]. Beside the
    evaluation classifier's CAS it shows whether classifier guidance fools its own classifier."""
    import numpy as np

    from guidediff.diffusion import q_sample

    device = next(classifier.parameters()).device
    g = torch.Generator().manual_seed(seed)
    correct, prob = 0, 0.0
    for lo in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[lo:lo + batch_size])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        y = torch.from_numpy(np.asarray(labels[lo:lo + batch_size], dtype=np.int64)).to(device)
        lam_b = torch.full((len(x),), float(lam), device=device)
        z = q_sample(x.to(device), lam_b, torch.randn(x.shape, generator=g).to(device))
        p = torch.softmax(classifier(z, lam_b).float(), dim=1)
        correct += int((p.argmax(1) == y).sum())
        prob += float(p.gather(1, y[:, None]).sum())
    n = max(len(images), 1)
    return {"accuracy": correct / n, "mean_prob": prob / n, "lam": float(lam)}
