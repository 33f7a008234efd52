"""∇_z log p_φ(c | z_λ) from a noisy classifier, the input of ``guidance.classifier_guidance``
(score form) and ``guidance.classifier_mean_shift`` (ancestral mean form), and how much the guiding
classifier believes the samples it guided."""

from __future__ import annotations

import torch
from torch import Tensor

from guidediff.guidance import GradLogProb, classifier_gradient


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
