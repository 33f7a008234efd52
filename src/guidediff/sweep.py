"""The guidance sweep: sample a model at several guidance weights, evaluate every metric per
weight, and write sweep.json plus the CFG paper's trade-off figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from guidediff.errors import require


def flatten_metrics(metrics: dict) -> dict:
    """evaluate_samples' result with KID and CAS as plain numbers (their details kept beside)."""
    flat = dict(metrics)
    kid = metrics.get("kid")
    if isinstance(kid, dict):
        flat["kid"], flat["kid_std"] = kid["mean"], kid["std"]
    cas = metrics.get("cas")
    if isinstance(cas, dict):
        flat["cas"], flat["cas_per_class"] = cas["overall"], cas["per_class"]
    return flat


def run_sweep(
    model: str,
    ws: list[float],
    *,
    n: int,
    steps: int,
    out_dir: str | Path,
    sampler: str = "ddim",
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 1000,
    classifier: str | None = None,
    bf16: bool = True,
) -> dict:
    """Sample ``n`` images per w (split evenly over the classes), evaluate FID-FMNIST, IS-FMNIST,
    CAS, precision/recall and KID per w, and write the results and figures into ``out_dir``."""
    import torch

    from guidediff import plots
    from guidediff.checkpoint import git_commit, load_model
    from guidediff.metrics.evaluate import evaluate_samples
    from guidediff.nets.fmnist_classifier import load_eval_classifier
    from guidediff.sampling import generate, resolve_device

    require(n >= 10, f"--n must be at least 10 (one image per class), got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    net, config = load_model(model, device)
    num_classes = config.model.num_classes
    require(num_classes > 0, "the sweep needs a class-conditional model (num_classes > 0)")
    per_class = n // num_classes
    eval_net = load_eval_classifier(classifier, device=device)

    summary = {
        "model": model,
        "n_per_w": per_class * num_classes,
        "steps": steps,
        "sampler": sampler,
        "seed": seed,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "commit": git_commit(),
        "fid_floor": None,
        "points": [],
    }
    points, grids = summary["points"], []
    for w in ws:
        result = generate(
            net, config, classes=list(range(num_classes)), ws=[w], n=per_class, sampler=sampler,
            steps=steps, seed=seed, device=device, batch_size=batch_size, bf16=bf16, progress=True,
        )
        seconds = result["seconds"]
        images, labels = result["x"], result["y"]
        metrics = flatten_metrics(evaluate_samples(images, labels, classifier=eval_net, device=device))
        point = {"w": float(w), **metrics, "sec_per_image": seconds / len(images), "nfe_per_image": result.get("nfe_per_image")}
        points.append(point)
        print(
            f"w={w:<5g} FID-FMNIST {metrics['fid']:.2f} (floor {metrics['fid_floor']:.2f}, n={metrics['n']})  "
            f"IS {metrics['is']:.2f}  CAS {metrics['cas']:.3f}  P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  "
            f"{1e3 * point['sec_per_image']:.2f} ms/image",
            flush=True,
        )
        summary["fid_floor"] = point["fid_floor"]
        # written after every w, so an interrupted sweep keeps what it measured
        (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
        keep = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(num_classes)])
        grids.append((images[keep], labels[keep], np.full(len(keep), w, dtype=np.float32)))

    fid_floor = summary["fid_floor"]
    plots.fid_vs_is({"CFG": points}, out / "fid_vs_is.png", fid_floor=fid_floor)
    plots.metrics_vs_knob(points, out / "metrics_vs_w.png", fid_floor=fid_floor)
    plots.grid_across_knob(
        np.concatenate([g[0] for g in grids]), np.concatenate([g[1] for g in grids]), np.concatenate([g[2] for g in grids]),
        out / "grid_across_w.png",
    )
    print(f"wrote {out / 'sweep.json'}, fid_vs_is.png, metrics_vs_w.png, grid_across_w.png")
    return summary
