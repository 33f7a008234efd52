"""Sampling a trained DDGAN: x_T ~ N(0, I), then T steps x_{t−1} ~ q(x_{t−1} | x_t, G(x_t, z, t))
(Xiao et al. 2022, eq. 7; one network evaluation per step, NFE = T).

``load_generator(source)`` takes a run directory, a checkpoint directory or an exported
model.safetensors (the config travels inside each); ``generate(G, config, n, ...)`` returns the
sample-file contract: x uint8 [N, H, W, C] (images) or float32 [N, 2] (2-D points), y int64
(class, −1 unconditional), w float32 (0: DDGAN has no guidance), plus nfe_per_image and seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from guidediff.ddgan.config import DDGANConfig, data_spec
from guidediff.ddgan.schedule import DiscreteVP, posterior_sample
from guidediff.errors import UsageError, require
from guidediff.runtime import derive_seed, resolve_device


@torch.no_grad()
def sample_chain(G, x_T: torch.Tensor, lams: torch.Tensor, nz: int, c: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, bf16: bool = False) -> torch.Tensor:
    """Run the T denoising steps from x_T (lams = λ_0 … λ_T, λ_0 = +∞); returns x_0 in float32."""
    x = x_T.float()
    b, dev = x.shape[0], x.device
    for i in range(len(lams) - 1, 0, -1):
        lam_t, lam_s = lams[i].expand(b), lams[i - 1].expand(b)
        z = torch.randn((b, nz), generator=generator, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            x0 = G(x, z, lam_t, c).float()
        x = posterior_sample(x, x0, lam_t, lam_s, torch.randn(x.shape, generator=generator, device=dev))
    return x


def _model_file(path: Path, device) -> tuple[dict[str, torch.Tensor], DDGANConfig]:
    from guidediff.checkpoint import read_tensors, safetensors_header
    from guidediff.ddgan.train import MODEL_FORMAT

    meta = safetensors_header(path).get("__metadata__") or {}
    require(meta.get("format") == MODEL_FORMAT and "config" in meta,
            f"{path} is not an exported DDGAN generator (no {MODEL_FORMAT!r} metadata); pass the run directory "
            "of `guidediff train-ddgan`")
    return read_tensors(path, device), DDGANConfig.from_dict(json.loads(meta["config"]), source=str(path))


def load_generator(source: str | Path, device: str | torch.device = "cpu", weights: str = "ema"
                   ) -> tuple[nn.Module, DDGANConfig]:
    """(G in eval mode on device, its config) from a run dir, checkpoint dir or exported model file.
    weights: "ema" (default, what sampling should use) or "model" (the raw generator)."""
    from guidediff.checkpoint import latest_checkpoint
    from guidediff.ddgan.train import CHECKPOINTS, MODEL_FILE, unprefixed, build_networks, read_ddgan_checkpoint

    require(weights in ("ema", "model"), f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(source).expanduser()
    if path.is_file():
        require(weights == "ema", f"{path} holds only the EMA generator; use weights='ema' or pass the run directory")
        tensors, config = _model_file(path, "cpu")
    elif path.is_dir():
        has_ckpt = (path / "state.json").is_file() or latest_checkpoint(path / CHECKPOINTS) is not None
        if not has_ckpt and (path / MODEL_FILE).is_file():
            tensors, config = _model_file(path / MODEL_FILE, "cpu")
        else:
            _, state, parts = read_ddgan_checkpoint(path, parts=(weights,))
            config = DDGANConfig.from_dict(state["config"], source=str(path))
            tensors = parts[weights] if weights == "ema" else unprefixed("G", parts["model"])
    else:
        raise UsageError(f"{path} does not exist; pass a DDGAN run directory, checkpoint or model.safetensors")
    shape, num_classes = data_spec(config.data)
    G, _ = build_networks(config, shape, num_classes)
    from guidediff.checkpoint import check_state_dict

    check_state_dict(tensors, G.state_dict(), str(path))
    G.load_state_dict(tensors)
    return G.to(resolve_device(device)).eval().requires_grad_(False), config


def generate(G: nn.Module, config: DDGANConfig, n: int, *, classes: list[int] | None = None, seed: int = 0,
             device: str | torch.device | None = None, batch_size: int = 1000, bf16: bool | None = None,
             progress: bool = False) -> dict[str, Any]:
    """n samples (per class when the model is conditional: classes default to all of them).

    Returns {"x", "y", "w", "nfe_per_image", "seconds"}; x is uint8 [N, H, W, C] for images and
    float32 [N, d] for 2-D data. The seconds cover generation only (synchronised on CUDA).
    """
    from guidediff.data.images import to_uint8

    require(isinstance(n, int) and n >= 1, f"n must be a positive integer, got {n!r}")
    require(batch_size >= 1, f"batch size must be >= 1, got {batch_size}")
    device = resolve_device(device)
    cuda = device.type == "cuda"
    # bf16 on CUDA unless the model was trained in float32 (the 2-D preset: its modes are 0.018 wide)
    bf16 = (cuda and config.train.mixed_precision != "no") if bf16 is None else bf16
    G = G.to(device).eval()
    shape, num_classes = data_spec(config.data)
    if config.data.conditional:
        classes = list(range(num_classes)) if classes is None else [int(k) for k in classes]
        require(all(0 <= k < num_classes for k in classes),
                f"classes must lie in 0..{num_classes - 1}, got {classes}")
    else:
        require(not classes or classes == [-1], "the model is unconditional; leave classes unset")
        classes = [-1]
    items = [c for c in classes for _ in range(n)]
    lams = DiscreteVP.of(config.diffusion).lams(device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="ddgan sampling", unit="img", leave=False)
    xs = []
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for b, lo in enumerate(range(0, len(items), batch_size)):
        chunk = items[lo:lo + batch_size]
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, "ddgan-sample", b, batch_size))
        c = torch.tensor(chunk, dtype=torch.long, device=device) if config.data.conditional else None
        x_T = torch.randn((len(chunk), *shape), generator=g, device=device)
        x = sample_chain(G, x_T, lams, config.generator.nz, c, g, bf16)
        xs.append(to_uint8(x.clamp(-1, 1)) if len(shape) == 3 else x.float().cpu().numpy())
        if bar is not None:
            bar.update(len(chunk))
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return {"x": np.concatenate(xs), "y": np.asarray(items, dtype=np.int64),
            "w": np.zeros(len(items), dtype=np.float32), "nfe_per_image": config.diffusion.T, "seconds": seconds}


def save_preview(path: str | Path, result: dict[str, Any], config: DDGANConfig, max_images: int = 64) -> Path:
    """A PNG of samples: an image grid, or a scatter plot of 2-D points over the data's modes."""
    path = Path(path)
    x = result["x"]
    if x.ndim == 4:
        from guidediff.images import save_grid

        k = min(len(x), max_images)
        cols = int(np.ceil(np.sqrt(k)))
        return save_grid(path, x[:k], int(np.ceil(k / cols)), cols)
    from guidediff.data.toy2d import load_toy
    from guidediff.plots import _pyplot, save_figure

    plt = _pyplot()
    means = load_toy(config.data.name).means.numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3, label="samples")
    ax.scatter(means[:, 0], means[:, 1], s=12, c="red", marker="x", label="modes")
    ax.set_aspect("equal")
    ax.set_title(f"DDGAN T={config.diffusion.T}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(plt, fig, path, dpi=120)


def sample_to_dir(source: str | Path, out: str | Path, n: int, *, classes: str | None = None, seed: int = 0,
                  device: str | torch.device | None = "auto", batch_size: int = 256, weights: str = "ema",
                  bf16: bool | None = None, max_cols: int = 16) -> tuple[dict[str, Any], DDGANConfig, list[Path]]:
    """`guidediff sample` for a DDGAN: n samples per class written to out as samples.npz (x, y, w as in
    ``generate``; w all 0) and a PNG (images: grid_w0.png, a row per class; 2-D: samples.png, a scatter
    over the modes). classes: the --classes text (all, 0-9, 0,3,5); None or "all" samples every class,
    and is the only choice for an unconditional model. Returns (result, config, files written)."""
    from guidediff.parsing import parse_classes
    from guidediff.generation import save_samples

    require(isinstance(n, int) and n >= 1, f"--n must be >= 1, got {n}")
    G, config = load_generator(source, resolve_device(device), weights=weights)
    _, num_classes = data_spec(config.data)
    if config.data.conditional:
        picked = parse_classes(classes if classes is not None else "all", num_classes)
    else:
        require(classes in (None, "all", ""), f"this DDGAN ({config.data.name}) is unconditional (no classes); "
                "leave --classes out")
        picked = None
    result = generate(G, config, n, classes=picked, seed=seed, device=device, batch_size=batch_size, bf16=bf16)
    if result["x"].ndim == 4:
        return result, config, save_samples(out, result, max_cols=max_cols)
    # 2-D points keep the contract's float [N, 2] form; a grid of images does not exist for them
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "samples.npz", x=result["x"], y=result["y"], w=result["w"])
    return result, config, [out / "samples.npz", save_preview(out / "samples.png", result, config)]
