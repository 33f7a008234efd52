"""Train the Fashion-MNIST evaluation classifier (the one whose features define FID-FMNIST).

The whole dataset sits on the device as one tensor and batches are indexed from it, so a GPU
epoch is a few hundred small steps with no DataLoader in the way. Recipe: random crop (pad 2) +
horizontal flip, AdamW with a one-cycle learning rate, bf16 autocast on CUDA. No label smoothing by
default: it caps the classifier's confidence (at 0.1 smoothing a perfect prediction still has
entropy 0.5 nats), and with it IS-FMNIST, whose range should reach 10 for confident, balanced
predictions. The last epoch's model is kept (no selection on the test set, which is only monitored).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from guidediff.errors import UsageError


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                fill: float = -1.0) -> torch.Tensor:
    """Pad a batch [B, C, H, W] by `pad` with `fill` and cut a random H×W window per image."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), value=fill)
    dev = generator.device if generator is not None else x.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    return xp.gather(2, rows).gather(3, cols)


@torch.inference_mode()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             autocast: bool = False) -> float:
    """Share of argmax(logits) == y over the set, in eval mode (float32 unless autocast)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size])
            correct += (logits.argmax(1) == y[start:start + batch_size]).sum()
    model.train(was_training)
    return correct.item() / len(x)


def train_fmnist_classifier(out_path: str | Path, epochs: int = 30, batch_size: int = 256,
                            lr: float = 2e-3, device: str | torch.device = "auto", seed: int = 0,
                            data_dir: str | Path | None = None, *, arch: dict | None = None,
                            weight_decay: float = 0.05, label_smoothing: float = 0.0,
                            train_limit: int | None = None,
                            log: Callable[[str], None] = print) -> dict:
    """Train FmnistClassifier on the 60k training images, write safetensors to out_path.

    Returns {"test_accuracy", "final_train_loss", "epochs", "seconds", "params", "path"}; the
    accuracy is measured in float32 on the 10k test set, as the evaluation harness runs the net.
    `arch` overrides FmnistClassifier's constructor arguments; `train_limit` keeps only the first
    images (for quick tests).
    """
    from guidediff.data.fmnist import load_fmnist

    train_images, train_labels = load_fmnist("train", data_dir)
    if train_limit is not None:
        train_images, train_labels = train_images[:train_limit], train_labels[:train_limit]
    return train_classifier((train_images, train_labels), load_fmnist("test", data_dir), out_path,
                            epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed, arch=arch,
                            weight_decay=weight_decay, label_smoothing=label_smoothing, log=log,
                            held_out_name="10k test images")


def holdout_split(labels, holdout: float, seed: int = 0):
    """(train indices, held-out indices): a fixed-seed split keeping ``holdout`` of each class
    (at least one image of every class with two or more)."""
    import numpy as np

    if not 0.0 < holdout < 1.0:
        raise UsageError(f"the held-out share must lie strictly between 0 and 1, got {holdout}")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(1, round(holdout * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def train_folder_classifier(data: str | Path, out_path: str | Path, *, resolution: int = 64, channels: int = 3,
                            holdout: float = 0.1, epochs: int = 30, batch_size: int = 256, lr: float = 2e-3,
                            device: str | torch.device = "auto", seed: int = 0, arch: dict | None = None,
                            skip_bad: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train the evaluation classifier on a user's image folder (one sub-folder per class),
    ``holdout`` of each class held out for the reported accuracy. The weights file records the
    folder, resolution, channels and class names, so ``guidediff eval --ref FOLDER`` can check them."""
    from guidediff.data.imagefolder import load_image_folder

    images, labels, class_names = load_image_folder(data, resolution, channels, skip_bad=skip_bad)
    if len(class_names) < 2:
        raise UsageError(f"{data} holds {len(class_names)} class sub-folder(s); a classifier needs at least two")
    train_idx, held_idx = holdout_split(labels, holdout, seed)
    if len(held_idx) == 0:
        raise UsageError(f"{data} has too few images to hold any out; add images (two or more per class)")
    arch = {"num_classes": len(class_names), "in_channels": channels, **(arch or {})}
    return train_classifier((images[train_idx], labels[train_idx]), (images[held_idx], labels[held_idx]), out_path,
                            epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed, arch=arch,
                            log=log, held_out_name=f"{len(held_idx)} held-out images",
                            info={"data": str(Path(data).expanduser().resolve()), "resolution": resolution,
                                  "channels": channels, "class_names": json.dumps(class_names),
                                  "holdout": holdout})


def train_classifier(train_set, held_out_set, out_path: str | Path, *, epochs: int = 30, batch_size: int = 256,
                     lr: float = 2e-3, device: str | torch.device = "auto", seed: int = 0, arch: dict | None = None,
                     weight_decay: float = 0.05, label_smoothing: float = 0.0, log: Callable[[str], None] = print,
                     held_out_name: str = "held-out images", info: dict | None = None) -> dict:
    """Train FmnistClassifier on (images uint8 [N, H, W, C], labels) and report its float32
    accuracy on ``held_out_set``; write the weights (with ``info`` in the metadata) to out_path."""
    from guidediff.data.images import random_hflip, to_tensor_dataset
    from guidediff.runtime import resolve_device
    from guidediff.nets.fmnist_classifier import FmnistClassifier, save_classifier

    if epochs < 1 or batch_size < 1 or not (lr > 0) or not math.isfinite(lr):
        raise UsageError(f"need epochs >= 1, batch size >= 1 and a positive learning rate; got "
                         f"epochs={epochs}, batch_size={batch_size}, lr={lr}")
    device = resolve_device(device)
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)

    x_train, y_train = to_tensor_dataset(*train_set, device)
    x_test, y_test = to_tensor_dataset(*held_out_set, device)
    pad = max(2, x_train.shape[-1] // 14)  # 2 pixels at 28, scaled with the image
    model = FmnistClassifier(**(arch or {})).to(device)
    if cuda:
        # channels_last lets cuDNN pick its fastest NHWC kernels for these small convolutions.
        model = model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
        x_test = x_test.contiguous(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    # No weight decay on BatchNorm scales and biases: decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                                  **({"fused": True} if cuda else {}))
    n = len(x_train)
    batch = min(batch_size, n)
    steps = n // batch  # drop the ragged last batch: a tiny batch upsets BatchNorm statistics
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps,
                                                   pct_start=0.25)
    log(f"training FmnistClassifier ({params / 1e6:.2f} M params) on {n} images, {epochs} epochs x "
        f"{steps} steps of {batch}, device {device}")

    start = time.perf_counter()
    loss_mean = float("nan")
    for epoch in range(epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        perm = torch.randperm(n, device=device, generator=gen)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            xb = random_hflip(random_crop(x_train[idx], pad, gen), gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach().float()
        loss_mean = loss_sum.item() / steps
        if not math.isfinite(loss_mean):
            raise UsageError(f"training diverged (loss {loss_mean}) at epoch {epoch + 1}; lower --lr")
        acc = accuracy(model, x_test, y_test, autocast=cuda)
        log(f"epoch {epoch + 1:3d}/{epochs}  loss {loss_mean:.4f}  test acc {acc:.2%}  "
            f"{time.perf_counter() - start:.1f}s")

    test_accuracy = accuracy(model, x_test, y_test, autocast=False)
    seconds = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format)
    path = save_classifier(model, out_path, test_accuracy=f"{test_accuracy:.6f}", epochs=epochs,
                           batch_size=batch, lr=lr, seed=seed, train_images=n,
                           weight_decay=weight_decay, label_smoothing=label_smoothing, **(info or {}))
    log(f"test accuracy {test_accuracy:.2%} (float32, {held_out_name}); wrote {path}")
    return {"test_accuracy": test_accuracy, "final_train_loss": loss_mean, "epochs": epochs,
            "seconds": seconds, "params": params, "path": str(path)}
