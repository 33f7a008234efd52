"""Training the noisy classifier p_φ(c | z_λ, λ) with the one training loop (``train.train``):
a cross-entropy loss closure on z_λ = α·x + σ·ε with u ~ U(0, 1) and the diffusion model's own
schedule λ(u) (ADM trains its classifier on the same noise levels the sampler visits), and a
"sample" hook that instead measures accuracy against λ on held-out images.

Accuracy falls to chance (1/K) as λ → λ_min: there the input is noise and the best classifier
returns the class prior; that is why the guidance gradient vanishes early in sampling.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guidediff.errors import require


def noisy_classifier_loss(config):
    """Loss closure ``loss_fn(model, x, c, ctx)``: E_{u,ε} −log p_φ(c | z_λ(u), λ(u)) (ADM, Sec. 4),
    the randomness drawn for the global batch (``losses.draw_noise``) and sliced per process."""
    from guidediff.diffusion import q_sample
    from guidediff.losses import draw_noise
    from guidediff.schedules import schedule_from_config

    d = config.diffusion
    schedule = schedule_from_config(d)

    def loss_fn(model: nn.Module, x: torch.Tensor, c: torch.Tensor, ctx) -> torch.Tensor:
        noise = draw_noise(ctx.global_batch, tuple(x.shape[1:]), p_uncond=0.0, antithetic=d.antithetic,
                           generator=ctx.generator, device=x.device).slice(ctx.start, ctx.stop)
        # λ(u) in float64 for the same reason as in losses.eps_loss (tan near u = 0, 1)
        lam = schedule.lam(noise.u.double()).to(x.dtype)
        z = q_sample(x, lam, noise.eps.to(x.dtype))
        return F.cross_entropy(model(z, lam).float(), c)

    return loss_fn


@torch.no_grad()
def accuracy_vs_lam(
    classifier: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam_min: float,
    lam_max: float,
    *,
    bins: int = 12,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """Accuracy of the noisy classifier in equal-width λ bins over [lam_min, lam_max]: every image
    (x in [−1, 1], [N, C, H, W]) is noised once per bin at a λ drawn uniformly inside the bin.
    Returns {"lam_edges", "lam_centers", "accuracy", "chance", "n"} (JSON-able)."""
    require(bins >= 1 and lam_max > lam_min, f"need bins >= 1 and lam_max > lam_min, got {bins}, [{lam_min}, {lam_max}]")
    from guidediff.diffusion import q_sample

    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    edges = torch.linspace(lam_min, lam_max, bins + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    acc = []
    for b in range(bins):
        correct = 0
        for lo in range(0, len(x), batch_size):
            xb = x[lo:lo + batch_size].to(device, torch.float32)
            lam = edges[b] + (edges[b + 1] - edges[b]) * torch.rand(len(xb), generator=g, dtype=torch.float64)
            eps = torch.randn(xb.shape, generator=g)
            z = q_sample(xb, lam.float().to(device), eps.to(device))
            logits = classifier(z, lam.float().to(device))
            correct += int((logits.argmax(1).cpu() == y[lo:lo + batch_size].cpu()).sum())
        acc.append(correct / len(x))
    classifier.train(was_training)
    k = int(getattr(classifier, "num_classes", 0)) or None
    return {"lam_edges": edges.tolist(), "lam_centers": ((edges[1:] + edges[:-1]) / 2).tolist(), "accuracy": acc,
            "chance": None if k is None else 1.0 / k, "n": len(x)}


def plot_accuracy_vs_lam(result: dict, path: str | Path, title: str = "noisy classifier") -> Path:
    """Accuracy against λ (one point per bin) with the chance level."""
    from guidediff.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result["lam_centers"], result["accuracy"], "o-", label="test accuracy")
    if result.get("chance") is not None:
        ax.axhline(result["chance"], color="gray", ls="--", label="chance")
    ax.set_xlabel("log-SNR λ (noisy ← → clean)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: accuracy vs λ (n = {result['n']})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(plt, fig, path, dpi=110)


def held_out_images(dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [N, C, H, W] float in [−1, 1], y [N] int64) from a DatasetArrays, the first ``limit``."""
    images = np.asarray(dataset.images[:limit])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x, torch.from_numpy(np.asarray(dataset.labels[:limit], dtype=np.int64))


def accuracy_hook(config, test_set, bins: int = 12):
    """A ``train.train`` sample_fn: every ``train.sample_every`` steps, accuracy vs λ of the EMA
    classifier on the held-out images, written as samples/accuracy_vs_lam_step*.json/png."""
    x, y = test_set
    d = config.diffusion

    def sample_fn(ema_model: nn.Module, step: int, out_dir: Path) -> None:
        lam_min, lam_max = lam_range(d)
        result = accuracy_vs_lam(ema_model, x, y, lam_min, lam_max, bins=bins, seed=config.train.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"accuracy_vs_lam_step{step:07d}.json").write_text(json.dumps({"step": step, **result}) + "\n")
        plot_accuracy_vs_lam(result, out_dir / f"accuracy_vs_lam_step{step:07d}.png", title=f"step {step}")

    return sample_fn


def lam_range(diffusion_config) -> tuple[float, float]:
    """The schedule's (λ_min, λ_max)."""
    from guidediff.schedules import schedule_from_config

    schedule = schedule_from_config(diffusion_config)
    lams = schedule.lam(torch.tensor([1.0, 0.0], dtype=torch.float64))
    return float(lams[0]), float(lams[1])


def train_noisy_classifier(config, run_dir: str | Path, train_set, test_set, *, resume: bool = False,
                           eval_images: int = 2000, time_limit_s: float | None = None, progress: bool = True,
                           command: str | None = None, log=None):
    """Train a NoisyClassifier through ``train.train`` (checkpoints, EMA, resume, export of
    model.safetensors), then write accuracy_vs_lam.json/png of the EMA weights on ``eval_images``
    held-out images. Returns (TrainResult, accuracy dict)."""
    from guidediff.classifier_guidance.network import NoisyClassifier
    from guidediff.runtime import derive_seed
    from guidediff.train import resolve_model_config, train

    run_dir = Path(run_dir)
    resolve_model_config(config, train_set)  # the label set and image shape come from the data
    require(test_set.num_classes == train_set.num_classes and test_set.resolution == train_set.resolution,
            "the test split does not match the training split (classes or size); use one dataset for both")
    torch.manual_seed(derive_seed(config.train.seed, "init"))
    net = NoisyClassifier(config.model)
    held_out = held_out_images(test_set, eval_images)
    result = train(config, run_dir, loss_fn=noisy_classifier_loss(config), net=net, dataset=train_set,
                   sample_fn=accuracy_hook(config, held_out), resume=resume, time_limit_s=time_limit_s,
                   progress=progress, command=command, log=log)
    from guidediff.classifier_guidance import load_noisy_classifier

    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch: one process measures
        return result, {}
    device = "cuda" if torch.cuda.is_available() and config.train.device != "cpu" else "cpu"
    classifier, _ = load_noisy_classifier(run_dir, device)
    lam_min, lam_max = lam_range(config.diffusion)
    accuracy = {"step": result.step, **accuracy_vs_lam(classifier, *held_out, lam_min, lam_max, seed=config.train.seed)}
    (run_dir / "accuracy_vs_lam.json").write_text(json.dumps(accuracy, indent=1) + "\n")
    plot_accuracy_vs_lam(accuracy, run_dir / "accuracy_vs_lam.png", title=f"noisy classifier, step {result.step}")
    return result, accuracy
