"""Figures of evaluation results (matplotlib, Agg backend; imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, write and close a figure; returns its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)

def fid_vs_is(curves: dict[str, list[dict]], path: str | Path, *, knob: str = "w", fid_floor: float | None = None) -> Path:
    """FID against IS with each point labelled by its knob value (the CFG paper's Figure 4 layout).
    ``curves`` maps a method name to its points (dicts with 'fid', 'is' and the knob)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, points in curves.items():
        xs = [p["is"] for p in points]
        ys = [p["fid"] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        for p in points:
            ax.annotate(f"{knob}={p.get(knob, p.get('knob'))}", (p["is"], p["fid"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if fid_floor is not None:
        ax.axhline(fid_floor, color="grey", linestyle="--", linewidth=1, label=f"real-data floor {fid_floor:.2f}")
    ax.set_xlabel("IS-FMNIST (higher is better)")
    ax.set_ylabel("FID-FMNIST (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(plt, fig, path, dpi=130)


def metrics_vs_knob(points: list[dict], path: str | Path, *, knob: str = "w", fid_floor: float | None = None) -> Path:
    """FID, IS, CAS, precision and recall against the guidance knob, one panel each."""
    plt = _pyplot()
    keys = [("fid", "FID-FMNIST"), ("is", "IS-FMNIST"), ("cas", "class accuracy of samples"), ("precision", "precision"), ("recall", "recall")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.0))
    xs = [p[knob] for p in points]
    for ax, (key, title) in zip(axes, keys):
        ys = [np.nan if p.get(key) is None else p[key] for p in points]
        ax.plot(xs, ys, marker="o")
        if key == "fid" and fid_floor is not None:
            ax.axhline(fid_floor, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(knob)
        ax.grid(alpha=0.3)
    return save_figure(plt, fig, path, dpi=120)


def training_curve(records: list[dict], path: str | Path) -> Path:
    """Loss against step from a training log (log.jsonl records with 'step' and 'loss')."""
    plt = _pyplot()
    steps = [r["step"] for r in records if "loss" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(steps, losses, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return save_figure(plt, fig, path, dpi=120)


def ddgan_curves(records: list[dict], path: str | Path) -> Path:
    """A DDGAN training log (log.jsonl records with 'step', 'loss_d', 'loss_g', 'd_real', 'd_fake'):
    the two losses beside their values when D is at chance (2·ln 2 and ln 2), and D's mean logits
    on real and generated pairs beside 0. Curves that sit on those lines mean D separates nothing.
    A run whose learning rates change (train.lr_schedule; records with 'lr_g', 'lr_d') gets a third
    panel with them."""
    import math

    plt = _pyplot()
    rows = [r for r in records if "loss_d" in r]
    steps = [r["step"] for r in rows]
    scheduled = len({(r.get("lr_g"), r.get("lr_d")) for r in rows if "lr_g" in r}) > 1
    fig, axes = plt.subplots(1, 3 if scheduled else 2, figsize=(15 if scheduled else 10, 3.5))
    left, right = axes[0], axes[1]
    if scheduled:
        for key, label in (("lr_g", "G"), ("lr_d", "D")):
            axes[2].plot(steps, [r.get(key, float("nan")) for r in rows], linewidth=1, label=label)
        axes[2].set_title("learning rates (train.lr_schedule)", fontsize=9)
    for key, chance, label in (("loss_d", 2 * math.log(2), "D loss"), ("loss_g", math.log(2), "G loss")):
        line, = left.plot(steps, [r[key] for r in rows], linewidth=1, label=label)
        left.axhline(chance, color=line.get_color(), linestyle=":", linewidth=1)
    left.set_title("losses (dotted: D at chance)", fontsize=9)
    for key, label in (("d_real", "D logit, real pairs"), ("d_fake", "D logit, generated pairs")):
        right.plot(steps, [r.get(key, float("nan")) for r in rows], linewidth=1, label=label)
    right.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    right.set_title("mean logits (over the levels)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(plt, fig, path, dpi=120)


def grid_across_knob(images: np.ndarray, labels: np.ndarray, knobs: np.ndarray, path: str | Path, *, per_cell: int = 4) -> Path:
    """A PNG with one row per class and one block of ``per_cell`` samples per knob value."""
    from PIL import Image

    classes = sorted(set(int(v) for v in labels))
    values = sorted(set(float(v) for v in knobs))
    h, w, ch = images.shape[1:]
    gap = 4
    width = len(values) * (per_cell * w + gap) - gap
    canvas = np.full((len(classes) * h, width, ch), 255, dtype=np.uint8)
    for row, c in enumerate(classes):
        for col, k in enumerate(values):
            idx = np.flatnonzero((labels == c) & np.isclose(knobs, k))[:per_cell]
            for j, i in enumerate(idx):
                x0 = col * (per_cell * w + gap) + j * w
                canvas[row * h : (row + 1) * h, x0 : x0 + w] = images[i]
    mode = "L" if ch == 1 else "RGB"
    Image.fromarray(canvas.squeeze(-1) if ch == 1 else canvas, mode=mode).save(path)
    return Path(path)
