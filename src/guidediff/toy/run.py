"""The 2-D toy end to end: train an MLP denoiser (or take the exact oracle) → guided sampling →
distances to the exact references → a Figure-2-style plot. ``run_toy`` is what ``guidediff toy``
calls; every step is also a plain function.

    from guidediff.toy.run import run_toy
    result = run_toy(data="gmm3", w=(0, 1, 3), out="runs/toy")   # trains for ~1 min on 2 cores
    result.metrics["results"][0]

Three references per (w, class), all sliced Wasserstein-2 distances (``toy.distances``):
(a) ``model_vs_exact``: trained model vs the exact-score sampler, same seed and sampler, so the two
    sample sets are coupled through their noise and (a) measures the model's error, not Monte-Carlo
    noise (null with ``oracle=True``);
(b) ``exact_vs_tilted``: exact-score guided sampler vs exact draws of the tilted density
    p(x|c)·p(c|x)^w, which is not zero for w > 0: guidance with exact scores does not sample the
    tilt (Chidambaram et al. 2024; Bradley & Nakkiran 2024);
(c) ``tilted_vs_tilted``: two independent exact draws of the tilt, the Monte-Carlo floor of (b).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from guidediff import guidance as guidance_lib
from guidediff import losses, samplers, schedules
from guidediff.data.toy2d import load_toy
from guidediff.ema import EMA
from guidediff.errors import UsageError, require
from guidediff.nets.mlp import MLPConfig, MLPDenoiser
from guidediff.toy.distances import sliced_wasserstein
from guidediff.toy.gmm import GaussianMixture
from guidediff.toy.tilted import data_log_densities, make_grid, sample_tilted, tilted_density

BASES = ("uncond", "cond")


@dataclass(frozen=True)
class ToyConfig:
    """Everything one toy run needs. ``w`` holds CFG weights (guidance="cfg") or classifier scales
    s (guidance="classifier"); ``n`` is per (class, weight), None = 20000 for the oracle, 2000 for
    a trained model (whose sampling costs a network call per row and step)."""

    data: str = "gmm3"
    oracle: bool = False
    w: tuple[float, ...] = (-1.0, 0.0, 3.0)
    classes: tuple[int, ...] | None = None
    n: int | None = None
    steps: int = 100
    sampler: str = "ddim"
    grid: str = "u"
    sigma_max: float | None = None  # the grid's start in sigma/alpha (EDM's 80); None: the schedule's
    seed: int = 0
    guidance: str = "cfg"  # any method of the guidance registry that needs no guide model
    base: str = "uncond"
    guidance_options: dict = field(default_factory=dict)  # the method's options (besides base)
    sampler_options: dict = field(default_factory=dict)
    schedule: str = "cfg"
    lam_min: float = -20.0
    lam_max: float = 20.0
    train_steps: int = 3000
    classifier_steps: int = 1000
    batch_size: int = 1024
    lr: float = 2e-3
    p_uncond: float = 0.15
    ema: float = 0.999
    hidden: int = 128
    depth: int = 3
    projections: int = 256
    out: str = "runs/toy"
    plot: bool = True
    threads: int | None = None
    progress: bool = False


@dataclass
class ToyResult:
    """What a run made: the output paths by name and the metrics dictionary (metrics.json)."""

    paths: dict[str, Path]
    metrics: dict
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation
def validate(config: ToyConfig, mixture: GaussianMixture) -> ToyConfig:
    """Check a config against its dataset before any work; fill n and classes. UsageError on bad input."""
    spec = guidance_lib.get_guidance(config.guidance)
    require(spec.needs != "guide" and spec.name != "distilled",
            f"guidance {spec.name} needs a guide model, which the toy does not train; pick another method")
    guidance_options(config)  # checks the method's options
    samplers.get_sampler(config.sampler).resolve(config.sampler_options)
    require(config.base in BASES, f"unknown base {config.base!r}; choose one of {', '.join(BASES)}")
    require(config.grid in schedules.GRIDS, f"unknown grid {config.grid!r}; choose one of {', '.join(schedules.GRIDS)}")
    require(config.sampler in samplers.SAMPLERS, f"unknown sampler {config.sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    require(len(config.w) > 0, "w needs at least one guidance weight, e.g. (0, 3)")
    for value in config.w:
        require(isinstance(value, (int, float)) and math.isfinite(value), f"guidance weights must be finite numbers, got {value!r}")
    require(isinstance(config.steps, int) and config.steps >= 1, f"steps must be an integer >= 1, got {config.steps!r}")
    require(math.isfinite(config.lam_min) and math.isfinite(config.lam_max) and config.lam_min < config.lam_max,
            f"the log-SNR range needs finite lam_min < lam_max, got [{config.lam_min}, {config.lam_max}]")
    # the grid's options, checked before any training
    schedules.lam_grid(schedules.make_schedule(config.schedule, config.lam_min, config.lam_max), 1,
                       kind=config.grid, sigma_max=config.sigma_max)
    classes = tuple(range(mixture.num_classes)) if config.classes is None else tuple(config.classes)
    require(len(classes) > 0, "give at least one class")
    for c in classes:
        require(
            0 <= c < mixture.num_classes,
            f"class {c} does not exist in {mixture.name} (classes 0..{mixture.num_classes - 1}); pick from those",
        )
    n = config.n if config.n is not None else (20000 if config.oracle else 2000)
    require(isinstance(n, int) and n >= 2, f"n (samples per class and weight) must be an integer >= 2, got {n!r}")
    if not config.oracle:
        require(config.train_steps >= 1, f"train_steps must be >= 1, got {config.train_steps}")
        require(spec.needs != "classifier" or config.classifier_steps >= 1,
                f"classifier_steps must be >= 1 (the noisy classifier trains here when oracle is off), got {config.classifier_steps}")
        require(0.0 <= config.p_uncond < 1.0, f"p_uncond must lie in [0, 1), got {config.p_uncond}")
        require(0.0 <= config.ema < 1.0, f"ema must lie in [0, 1) (0 = off), got {config.ema}")
    require(config.projections >= 1, f"projections must be >= 1, got {config.projections}")
    require(isinstance(config.batch_size, int) and config.batch_size >= 1,
            f"batch size must be an integer >= 1, got {config.batch_size!r}")
    require(config.threads is None or config.threads >= 1, f"threads must be >= 1, got {config.threads}")
    return replace(config, classes=classes, n=n, w=tuple(float(v) for v in config.w))


def prepare_out(out: str | Path) -> Path:
    """Create the output directory and make sure it is writable (UsageError naming it if not)."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to the output directory {str(path)!r} ({exc.strerror or exc}); pass a writable --out") from None
    return path


# --------------------------------------------------------------------------- training
def train_toy_denoiser(
    mixture: GaussianMixture,
    *,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 2e-3,
    p_uncond: float = 0.15,
    ema: float = 0.999,
    hidden: int = 128,
    depth: int = 3,
    schedule=None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> MLPDenoiser:
    """Train an MLP ε-denoiser on fresh mixture draws with the CFG paper's Algorithm 1: ε-loss,
    label dropout p_uncond, Adam with warm-up and linear decay; returns the EMA weights (or the raw
    weights with ema = 0), in eval mode."""
    schedule = schedule if schedule is not None else schedules.make_schedule("cfg")
    torch.manual_seed(seed)
    net = MLPDenoiser(MLPConfig(num_classes=mixture.num_classes, dim=mixture.dim, hidden=hidden, depth=depth))
    averaged = EMA(net, decay=ema, warmup=True) if ema > 0 else None
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = min(100, steps)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * (1.0 - i / steps))
    gen = torch.Generator().manual_seed(seed)
    running, start = 0.0, time.time()
    for i in range(steps):
        x, y = mixture.sample(batch_size, generator=gen)
        noise = losses.draw_noise(batch_size, (mixture.dim,), p_uncond=p_uncond, generator=gen)
        loss = losses.eps_loss(net, x.float(), y, schedule, noise, null_class=mixture.null_class)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_at.step()
        if averaged is not None:
            averaged.update(net)  # with warm-up, so early averages do not remember the init
        running = 0.98 * running + 0.02 * float(loss.detach())
        if log is not None and ((i + 1) % max(1, steps // 5) == 0 or i + 1 == steps):
            log(f"  train step {i + 1}/{steps}  loss {running / (1 - 0.98 ** (i + 1)):.4f}  ({time.time() - start:.0f} s)")
    model = averaged.module if averaged is not None else net
    return model.eval().requires_grad_(False)


def train_toy_classifier(
    mixture: GaussianMixture,
    *,
    steps: int = 1000,
    batch_size: int = 1024,
    lr: float = 2e-3,
    hidden: int = 128,
    depth: int = 3,
    schedule=None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
):
    """Train a noisy MLP classifier p_φ(c | z_λ, λ) on fresh mixture draws: cross-entropy at
    z_λ = α·x + σ·ε, u ~ U(0, 1), the denoiser's schedule (ADM's classifier objective). Adam with
    warm-up and linear decay; returns the net in eval mode, frozen."""
    import torch.nn.functional as F

    from guidediff.diffusion import q_sample
    from guidediff.classifier_guidance.network import NoisyMLPClassifier

    schedule = schedule if schedule is not None else schedules.make_schedule("cfg")
    torch.manual_seed(seed)
    net = NoisyMLPClassifier(mixture.num_classes, mixture.dim, hidden=hidden, depth=depth)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = min(100, steps)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * (1.0 - i / steps))
    gen = torch.Generator().manual_seed(seed + 7)
    running, start = 0.0, time.time()
    for i in range(steps):
        x, y = mixture.sample(batch_size, generator=gen)
        noise = losses.draw_noise(batch_size, (mixture.dim,), p_uncond=0.0, generator=gen)
        lam = schedule.lam(noise.u.double()).float()
        loss = F.cross_entropy(net(q_sample(x.float(), lam, noise.eps), lam), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_at.step()
        running = 0.98 * running + 0.02 * float(loss.detach())
        if log is not None and ((i + 1) % max(1, steps // 3) == 0 or i + 1 == steps):
            log(f"  classifier step {i + 1}/{steps}  cross-entropy {running / (1 - 0.98 ** (i + 1)):.4f}  "
                f"({time.time() - start:.0f} s)")
    return net.eval().requires_grad_(False)


def save_toy_model(model: MLPDenoiser, path: str | Path, *, data: str) -> Path:
    """Weights in safetensors with the MLP config and dataset name in its metadata (never pickle)."""
    from safetensors.torch import save_file

    meta = {"mlp_config": json.dumps(model.config.to_json()), "data": data}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return Path(path)


def load_toy_model(path: str | Path) -> MLPDenoiser:
    """Load a model written by ``save_toy_model``; needs only the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    require("mlp_config" in meta, f"{path} is not a toy MLP checkpoint (no mlp_config in its metadata)")
    model = MLPDenoiser(MLPConfig(**json.loads(meta["mlp_config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- guided sampling
def tilt_exponent(guidance: str, base: str, value: float) -> float:
    """The w of the target p(x|c)·p(c|x)^w: CFG weight w; classifier scale s on the unconditional
    model tilts p(x)·p(c|x)^s ∝ p(x|c)·p(c|x)^{s−1}; on the conditional model p(x|c)·p(c|x)^s."""
    if guidance_lib.get_guidance(guidance).weight == "w":
        return value
    return value - 1.0 if base == "uncond" else value


def guidance_options(config: ToyConfig) -> dict:
    """The guidance method's options: ``guidance_options`` plus ``base`` where the method takes it."""
    spec = guidance_lib.get_guidance(config.guidance)
    options = dict(config.guidance_options)
    if any(o.name == "base" for o in spec.options):
        options.setdefault("base", config.base)
    return spec.resolve(options)


def guided(
    denoiser,
    weights: Tensor,
    *,
    null_class: int,
    guidance: str = "cfg",
    base: str = "uncond",
    grad_log_prob=None,
    options: dict | None = None,
):
    """The guided denoiser for per-row weights, built by the guidance registry: CFG (guidance.cfg),
    classifier guidance on the unconditional or conditional base, or any other registered method
    that needs no guide model."""
    spec = guidance_lib.get_guidance(guidance)
    require(spec.needs != "classifier" or grad_log_prob is not None,
            "classifier guidance needs grad_log_prob (a classifier's ∇ log p(c|z))")
    resolved = guidance_options(ToyConfig(guidance=guidance, base=base, guidance_options=dict(options or {})))
    context = guidance_lib.GuidanceContext(grad_log_prob=grad_log_prob)
    return spec.build(denoiser, weights, null_class, context, **resolved)


def sample_toy(
    denoiser,
    *,
    classes: tuple[int, ...],
    weights: tuple[float, ...],
    n: int,
    steps: int,
    sampler: str = "ddim",
    sampler_options: dict | None = None,
    grid: str = "u",
    sigma_max: float | None = None,
    schedule=None,
    seed: int = 0,
    dim: int = 2,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One batched sampling run over every (weight, class) pair, n rows each, rows ordered by
    weight then class. ``denoiser`` is a factory ``weights [N] -> guided denoiser``. Returns x [N, dim],
    y [N] int64 (the asked class), w [N] (the weight or scale)."""
    schedule = schedule if schedule is not None else schedules.make_schedule("cfg")
    y = torch.tensor(classes, dtype=torch.int64).repeat_interleave(n).repeat(len(weights))
    w = torch.tensor(weights, dtype=dtype).repeat_interleave(n * len(classes))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(y), dim, generator=gen, dtype=dtype)
    lams = schedules.lam_grid(schedule, steps, kind=grid, sigma_max=sigma_max, dtype=dtype)
    with torch.no_grad():
        guided_denoiser = denoiser(w)
        options = {**(sampler_options or {}), **getattr(guided_denoiser, "sampler_options", {})}
        x = samplers.sample(guided_denoiser, z, lams, y, sampler=sampler, generator=gen, progress=progress, **options)
    return x, y, w


# --------------------------------------------------------------------------- metrics and figure
def toy_metrics(
    mixture: GaussianMixture,
    exact: tuple[Tensor, Tensor, Tensor],
    model: tuple[Tensor, Tensor, Tensor] | None,
    *,
    weights: tuple[float, ...],
    classes: tuple[int, ...],
    guidance: str = "cfg",
    base: str = "uncond",
    projections: int = 256,
    seed: int = 0,
) -> list[dict]:
    """Per (weight, class): (a) model↔exact, (b) exact↔tilted, (c) tilted↔tilted (see module doc).
    Rows of the sample sets are in ``sample_toy``'s order: by weight, then class, n each."""
    x_exact = exact[0]
    n = len(x_exact) // (len(weights) * len(classes))
    gen = torch.Generator().manual_seed(seed + 1)

    def dist(a: Tensor, b: Tensor) -> float:
        return sliced_wasserstein(a, b, projections=projections, seed=seed)

    rows = []
    for i, value in enumerate(weights):
        for j, c in enumerate(classes):
            block = slice((i * len(classes) + j) * n, (i * len(classes) + j + 1) * n)
            tilt = tilt_exponent(guidance, base, value)
            ref1 = sample_tilted(mixture, c, tilt, n, generator=gen)
            ref2 = sample_tilted(mixture, c, tilt, n, generator=gen)
            rows.append(
                {
                    "w": value,
                    "tilt_w": tilt,
                    "class": c,
                    "n": n,
                    "model_vs_exact": None if model is None else dist(model[0][block], x_exact[block]),
                    "exact_vs_tilted": dist(x_exact[block], ref1),
                    "tilted_vs_tilted": dist(ref1, ref2),
                }
            )
    return rows


def plot_toy(
    mixture: GaussianMixture,
    path: str | Path,
    panels: list[tuple[str, Tensor, Tensor, Tensor]],
    *,
    guidance: str = "cfg",
    base: str = "uncond",
    max_points: int = 1500,
) -> Path:
    """Figure 2 of the CFG paper with samples: one column per weight, one row per sample set
    (name, x, y, w); each panel shows the exact tilted densities p(x|c)·p(c|x)^w of every class as
    coloured contours and the samples as dots of the class colour."""
    from guidediff.plots import _pyplot, save_figure

    plt = _pyplot()
    weights = list(dict.fromkeys(panels[0][3].tolist()))
    classes = sorted(set(panels[0][2].tolist()))
    grid = make_grid(mixture, max_cells=400)
    logs = data_log_densities(mixture, grid.points)
    colours = plt.get_cmap("tab10" if mixture.num_classes <= 10 else "tab20")
    gx, gy = grid.xs.numpy(), grid.ys.numpy()
    # The view: the grid, widened to the bulk of the samples (guidance can push them outside it).
    pooled = torch.cat([p[1] for p in panels]).double()
    q_lo, q_hi = pooled.quantile(0.001, dim=0), pooled.quantile(0.999, dim=0)
    ext = grid.extent
    limits = [(min(ext[2 * i], float(q_lo[i])), max(ext[2 * i + 1], float(q_hi[i]))) for i in range(2)]
    fig, axes = plt.subplots(len(panels), len(weights), figsize=(3.2 * len(weights), 3.2 * len(panels)), squeeze=False)
    for col, value in enumerate(weights):
        tilt = tilt_exponent(guidance, base, value)
        dens = {c: tilted_density(mixture, grid, c, tilt, log_densities=logs).numpy() for c in classes}
        for row, (name, x, y, w) in enumerate(panels):
            ax = axes[row][col]
            for c in classes:
                d = dens[c]
                ax.contour(gx, gy, d, levels=d.max() * torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]).numpy(),
                           colors=[colours(c % colours.N)], linewidths=0.8)
                pts = x[(w == value) & (y == c)][:max_points].numpy()
                ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.35, color=colours(c % colours.N), rasterized=True)
            label = f"w = {value:g}" if guidance == "cfg" else f"s = {value:g} (tilt w = {tilt:g})"
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlim(*limits[0])
            ax.set_ylim(*limits[1])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{mixture.name}: contours = exact p(x|c)·p(c|x)^w per class, dots = guided samples", fontsize=10)
    return save_figure(plt, fig, path, dpi=110)


def format_table(rows: list[dict]) -> str:
    """The metrics as a fixed-width text table."""
    head = f"{'w':>7} {'class':>5} {'n':>6} {'(a) model-exact':>16} {'(b) exact-tilted':>17} {'(c) tilted-tilted':>18}"
    lines = [head]
    for r in rows:
        a = "-" if r["model_vs_exact"] is None else f"{r['model_vs_exact']:.4f}"
        lines.append(
            f"{r['w']:>7g} {r['class']:>5d} {r['n']:>6d} {a:>16} {r['exact_vs_tilted']:>17.4f} {r['tilted_vs_tilted']:>18.4f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the whole run
def run_toy(config: ToyConfig | None = None, *, log: Callable[[str], None] | None = print, **overrides) -> ToyResult:
    """Train (or take the oracle) → sample every (w, class) → metrics → figure; writes samples.npz,
    dataset.json, metrics.json and toy.png into ``config.out``."""
    import numpy as np

    config = replace(config or ToyConfig(), **overrides)
    say = log or (lambda _msg: None)
    mixture = load_toy(config.data)
    config = validate(config, mixture)
    schedule = schedules.make_schedule(config.schedule, config.lam_min, config.lam_max)
    out = prepare_out(config.out)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    timings: dict[str, float] = {}
    paths: dict[str, Path] = {}

    def factory(den, grad_log_prob=mixture.grad_log_prob):
        return lambda weights: guided(
            den, weights, null_class=mixture.null_class, guidance=config.guidance, base=config.base,
            grad_log_prob=grad_log_prob, options=config.guidance_options,
        )

    common = dict(classes=config.classes, weights=config.w, n=config.n, steps=config.steps,
                  sampler=config.sampler, sampler_options=config.sampler_options, grid=config.grid,
                  sigma_max=config.sigma_max, schedule=schedule,
                  seed=config.seed, dim=mixture.dim,
                  progress=config.progress)
    model_samples = None
    if not config.oracle:
        t0 = time.time()
        say(f"training a {config.hidden}x{config.depth} MLP on {config.data} for {config.train_steps} steps ...")
        model = train_toy_denoiser(
            mixture, steps=config.train_steps, batch_size=config.batch_size, lr=config.lr,
            p_uncond=config.p_uncond, ema=config.ema, hidden=config.hidden, depth=config.depth,
            schedule=schedule, seed=config.seed, log=log,
        )
        timings["train_s"] = time.time() - t0
        paths["model"] = save_toy_model(model, out / "model.safetensors", data=config.data)
        model_grad = mixture.grad_log_prob
        if guidance_lib.get_guidance(config.guidance).needs == "classifier":
            # the trained model is guided by a trained noisy classifier; the exact run by the Bayes one
            t0 = time.time()
            say(f"training a noisy MLP classifier on {config.data} for {config.classifier_steps} steps ...")
            classifier = train_toy_classifier(mixture, steps=config.classifier_steps, batch_size=config.batch_size,
                                              schedule=schedule, seed=config.seed, log=log)
            timings["train_classifier_s"] = time.time() - t0
            model_grad = guidance_lib.classifier_gradient(classifier.log_prob)
        t0 = time.time()
        model_samples = sample_toy(factory(model, model_grad), **common)
        timings["sample_model_s"] = time.time() - t0
    t0 = time.time()
    exact = sample_toy(factory(mixture), **common)
    timings["sample_exact_s"] = time.time() - t0

    t0 = time.time()
    rows = toy_metrics(mixture, exact, model_samples, weights=config.w, classes=config.classes,
                       guidance=config.guidance, base=config.base, projections=config.projections, seed=config.seed)
    timings["metrics_s"] = time.time() - t0

    x, y, w = model_samples if model_samples is not None else exact
    paths["samples"] = out / "samples.npz"
    np.savez(paths["samples"], x=x.numpy().astype(np.float32), y=y.numpy().astype(np.int64), w=w.numpy().astype(np.float32))
    paths["dataset"] = out / "dataset.json"
    paths["dataset"].write_text(json.dumps(mixture.to_json(), indent=1))
    if config.plot:
        t0 = time.time()
        panels = [("exact scores", *exact)] if model_samples is None else [("trained MLP", *model_samples), ("exact scores", *exact)]
        paths["figure"] = plot_toy(mixture, out / "toy.png", panels, guidance=config.guidance, base=config.base)
        timings["plot_s"] = time.time() - t0
    metrics = {
        "data": config.data,
        "samples_from": "exact oracle" if model_samples is None else (
            "trained MLP + trained noisy classifier" if config.guidance == "classifier" else "trained MLP"),
        "distance": f"sliced Wasserstein-2, {config.projections} random projections",
        "guidance": config.guidance,
        "base": config.base if config.guidance == "classifier" else None,
        "weight_meaning": "CFG weight w" if config.guidance == "cfg" else "classifier scale s (tilt_w = the w of p(x|c)p(c|x)^w)",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "timings_s": timings,
        "results": rows,
    }
    paths["metrics"] = out / "metrics.json"
    paths["metrics"].write_text(json.dumps(metrics, indent=1))
    return ToyResult(paths=paths, metrics=metrics, timings=timings)
