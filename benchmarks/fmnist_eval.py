"""Shared by recipe_ablation.py and time_to_quality.py: sample a trained Fashion-MNIST model at a
few guidance weights (DDIM, n per class) and score the samples (FID-FMNIST, CAS, ...), and write
a JSON file atomically so a killed process leaves the last complete record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable


from guidediff.metrics.evaluate import evaluate_samples
from guidediff.generation import generate
from guidediff.sweep import flatten_metrics

KEYS = ("fid", "fid_floor", "is", "cas", "precision", "recall", "n")


def metrics(images, labels, device) -> dict:
    m = flatten_metrics(evaluate_samples(images, labels, device=device))
    return {k: m[k] for k in KEYS}


def evaluate_at(net, config, ws: list[float], per_class: int, *, ddim_steps: int, device: str, seed: int = 0,
                on_point: Callable[[dict], None] | None = None, sampler: str = "ddim", grid: str = "u",
                sigma_max: float | None = None, batch_size: int = 1000, compile: bool | None = None) -> list[dict]:
    """One point per w: FID-FMNIST, CAS, ... of per_class × 10 samples of ``sampler`` on ``grid``
    with ``ddim_steps`` steps, the grid starting at ``sigma_max`` if given (torch.compile on CUDA unless
    ``compile`` says otherwise).
    ``on_point`` sees each point as soon as it exists (write JSON incrementally)."""
    points = []
    for w in ws:
        t0 = time.perf_counter()
        out = generate(net, config, list(range(config.model.num_classes)), [w], per_class, sampler=sampler,
                       steps=ddim_steps, grid=grid, sigma_max=sigma_max, seed=seed, device=device,
                       batch_size=batch_size, progress=False,
                       compile=device == "cuda" if compile is None else compile)
        point = {"w": w, **metrics(out["x"], out["y"], device), "sample_seconds": out["seconds"],
                 "sample_and_eval_seconds": time.perf_counter() - t0}
        points.append(point)
        print(f"  w={w:g}: FID {point['fid']:.4f} CAS {point['cas']:.4f} ({point['sample_and_eval_seconds']:.0f} s)",
              flush=True)
        if on_point is not None:
            on_point(point)
    return points


def write_json(path: Path, payload: dict) -> None:
    """Write atomically (checkpoint.write_text_atomic), so a reader never sees half a file."""
    from guidediff.checkpoint import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
