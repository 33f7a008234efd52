"""Checkpoint → samples: class-conditional generation with classifier-free guidance.

``generate`` runs one of the samplers over ``guidance.cfg`` for every (w, class, index) asked,
in large batches that mix classes and guidance weights (cond and uncond rows in one forward).
The initial noise of item (class c, index i) comes from a CPU generator seeded by (seed, c, i),
so it does not depend on the batch size, the other classes asked or w: the grids for different
w show the same starting noise. With the deterministic DDIM sampler (eta = 0) the whole result is
then independent of the batch size up to floating-point reassociation; stochastic samplers draw
their step noise per batch, so they repeat exactly for the same (seed, batch_size).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guidediff.errors import UsageError, require
from guidediff.runtime import derive_seed, resolve_device


def initial_noise(seed: int, items: list[tuple[int, int]], shape: tuple[int, ...]) -> torch.Tensor:
    """z ~ N(0, I) for each (class, index) item, each from its own seeded CPU generator.

    The samplers take it as the VP latent z = α·x + σ·ε at the grid's first λ_0, whose marginal
    has per-dimension variance σ² + α²·E[x²] = 1 − α²·(1 − E[x²]). N(0, I) is that to within α²:
    e^{−20} at the schedules' λ = −20, and 1/(1 + 80²) ≈ 1.6e-4 at EDM's σ_max = 80 (a grid started
    with ``sigma_max``), a KL of about α⁴/4 per dimension. EDM's own start x = σ_max·ε in its scaled
    variables is z = α·σ_max·ε = σ·ε here, as close (variance 1 − α²); the same z serves both."""
    g = torch.Generator()
    out = torch.empty((len(items), *shape))
    for k, (c, i) in enumerate(items):
        g.manual_seed(derive_seed(seed, "z", c, i))
        out[k] = torch.randn(shape, generator=g)
    return out


def _legacy_guidance(guidance, guidance_options, cfg_variant, base, cg_form) -> tuple[str, dict[str, Any]]:
    """(method name, its options) from generate's keywords: ``cfg_variant`` {"name": ..., **options}
    names a CFG-family method; ``base`` / ``cg_form`` are classifier guidance's options."""
    options = dict(guidance_options or {})
    if cfg_variant is not None:
        variant = dict(cfg_variant)
        name = variant.pop("name", None)
        require(guidance == "cfg", f"cfg_variant replaces guidance='cfg'; pass guidance={name!r} or leave "
                                   f"cfg_variant out")
        guidance, options = name, {**variant, **options}
    for key, value in (("base", base), ("cg_form", cg_form)):
        if value is not None:
            options.setdefault(key, value)
    return guidance, options


def require_finite(x: torch.Tensor, *nets: torch.nn.Module | None) -> torch.Tensor:
    """x, unless it holds NaN or inf: then a UsageError naming the model(s) that made it, since
    the clamp to [-1, 1] would otherwise turn the failure into black or white images."""
    if not bool(torch.isfinite(x).all()):
        names = " or ".join(str(getattr(net, "source", "the model")) for net in nets if net is not None)
        raise UsageError(f"{names} produced non-finite values (NaN or inf) while sampling; its weights or "
                         "settings are broken: try --no-bf16, less extreme guidance weights, or another checkpoint")
    return x


def plan_guidance(net, config, ws, guidance: str, options: dict[str, Any], *, classifier=None, guide_net=None):
    """(GuidanceSpec, resolved options) after checking the method against the model, the extra
    network it needs and the weights. A distilled student gets the ``distilled`` method."""
    from guidediff.guidance import get_guidance
    from guidediff.guidance.registry import NEEDS
    from guidediff.nets.w_conditioned import WConditionedUNet

    spec = get_guidance(guidance)
    if isinstance(net, WConditionedUNet):
        require(spec.name in ("cfg", "distilled") and not options,
                "this model is a distilled student: it applies w itself, so leave out the guidance method "
                f"(got guidance={spec.name!r})")
        spec = get_guidance("distilled")
    options = spec.resolve(options)
    extra = {"guide": guide_net, "classifier": classifier}
    for need, module in extra.items():
        parameter = NEEDS[need]
        if spec.needs == need:
            require(module is not None, f"guidance {spec.name} needs {parameter} (a {need} network)")
            if spec.check_net is not None:
                spec.check_net(config.model, module)
        else:
            require(module is None, f"{parameter} is used only by the guidance method that needs it, not by {spec.name}")
    if config.model.num_classes == 0:
        require(all(w == 0.0 for w in ws), "the model is unconditional, so there is nothing to guide: use w = 0")
    return spec, options


def _network(module, device, *, bf16: bool, channels_last: bool, compile: bool, diffusion=None):
    """The module as a counted denoiser on ``device`` (bf16 autocast, channels-last, compiled when asked),
    wrapped by the preconditioning ``diffusion`` (a DiffusionConfig) names, if any."""
    from guidediff.guidance import CountingDenoiser
    from guidediff.precondition import wrap_for_config

    module = module.to(device).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    forward = torch.compile(module, dynamic=False) if compile else module
    # EDM preconditioning lives outside the net; a distilled student's w passes through it to the net
    denoiser = wrap_for_config(forward, diffusion) if diffusion is not None else forward

    def network(z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        if channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return denoiser(z, lam, c, *extra).float()

    return CountingDenoiser(network)


class _ClassifierGrad:
    """∇ log p(c|z) of the noisy classifier, counting the rows it differentiates."""

    def __init__(self, classifier, device, *, bf16: bool, compile: bool):
        from guidediff.classifier_guidance import classifier_grad_log_prob

        classifier = classifier.to(device).eval().requires_grad_(False)
        self.grad = classifier_grad_log_prob(torch.compile(classifier, dynamic=False) if compile else classifier,
                                             bf16=bf16)
        self.rows = 0

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.rows += z.shape[0]
        return self.grad(z, lam, c)


def _batches(items, spec, batch_size: int) -> list[list[int]]:
    """Batches of item indices; weights at which the method needs one forward per step (plain CFG's
    w = 0 and w = −1) get batches of their own."""
    kinds: dict[float | None, list[int]] = {}
    for k, (w, _, _) in enumerate(items):
        kinds.setdefault(w if w in spec.cheap_at else None, []).append(k)
    return [ks[lo:lo + batch_size] for ks in kinds.values() for lo in range(0, len(ks), batch_size)]


def generate(
    net: torch.nn.Module,
    config,
    classes: list[int],
    ws: list[float],
    n: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    grid: str = "u",
    sigma_max: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    guidance: str = "cfg",
    guidance_options: dict[str, Any] | None = None,
    classifier: torch.nn.Module | None = None,
    guide_net: torch.nn.Module | None = None,
    sampler_options: dict[str, Any] | None = None,
    eta: float = 0.0,
    v: float = 0.3,
    clip_x: float | None = 1.0,
    bf16: bool | None = None,
    channels_last: bool | None = None,
    progress: bool = True,
    compile: bool = False,
    base: str | None = None,
    cg_form: str | None = None,
    cfg_variant: dict[str, Any] | None = None,
    cuda_graph: bool = False,
) -> dict[str, Any]:
    """n samples for every (w, class), in that order.

    ``guidance`` names a method of the guidance registry (``guidance.GUIDANCE``: cfg, interval,
    rescale, apg, autoguidance, classifier, ...) and ``guidance_options`` its options; the extra
    network a method needs comes as ``guide_net`` (autoguidance: same image shape and label set as
    ``net``) or ``classifier`` (a noisy classifier, ``classifier_guidance.network``). For classifier
    guidance the values in ``ws`` are the scales s (the result's ``w`` holds s). A distilled
    student (``nets.w_conditioned``) applies w itself. Shorthands kept for callers:
    ``cfg_variant={"name": method, **options}``, ``base`` and ``cg_form`` (classifier options).

    ``sampler`` names a sampler of ``samplers.SAMPLERS`` and ``sampler_options`` its options;
    ``eta``, ``v`` and ``clip_x`` reach the samplers that declare them (images live in [−1, 1]:
    clip_x = 1 clips x̂ there, see ``samplers.predict``).

    ``grid`` picks the step grid (``schedules.lam_grid``: u, lambda or karras) for any sampler;
    ``sigma_max`` (σ/α, EDM's σ_max, e.g. 80) starts it there instead of at the schedule's noisiest
    point (None), still from z ~ N(0, I) (``initial_noise`` says why that stays right).

    ``compile`` runs the networks through ``torch.compile`` (on CUDA about 3x faster for the
    Fashion-MNIST UNet; the first batch of each shape pays the compilation, before the clock).

    ``cuda_graph`` captures each batch's whole DDIM trajectory (η = 0) in one CUDA graph and replays
    it (``cuda_graphs``); elsewhere it falls back to the plain loop with a note.

    Returns x uint8 [N, H, W, C], y int64 (the asked class, −1 when unconditional), w float32,
    plus the cost: nfe_per_image (network evaluations per image; a guided step costs 2),
    classifier_evals_per_image (classifier guidance) and seconds. ``bf16``/``channels_last``
    default to on for CUDA.
    """
    from guidediff.data.images import to_uint8
    from guidediff.guidance import GuidanceContext
    from guidediff.samplers import get_sampler

    require(isinstance(n, int) and n >= 1, f"n must be a positive integer, got {n!r}")
    require(isinstance(steps, int) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    sampler_spec = get_sampler(sampler)
    options = _sampler_options(sampler_spec, {"eta": eta, "v": v, "clip_x": clip_x}, sampler_options)
    spec, method_options = plan_guidance(net, config, ws, *_legacy_guidance(guidance, guidance_options, cfg_variant,
                                                                              base, cg_form),
                                         classifier=classifier, guide_net=guide_net)
    mc = config.model
    if mc.num_classes == 0:
        classes = [-1]
    device = resolve_device(device)
    cuda = device.type == "cuda"
    bf16 = cuda if bf16 is None else bf16
    channels_last = cuda if channels_last is None else channels_last
    runtime = dict(bf16=bf16, channels_last=channels_last, compile=compile)
    counter = _network(net, device, **runtime, diffusion=config.diffusion)
    guide = (_network(guide_net, device, **runtime, diffusion=getattr(guide_net, "diffusion_config", None))
             if guide_net is not None else None)
    grad = _ClassifierGrad(classifier, device, bf16=bf16, compile=compile) if classifier is not None else None
    context = GuidanceContext(guide=guide, grad_log_prob=grad)
    # a VDM brings its own (learned) schedule, a diffusers model its scheduler; others sample the config's
    lams = model_lam_grid(config, steps, device, kind=grid, schedule=getattr(net, "schedule", None),
                          sigma_max=sigma_max)
    shape = (mc.in_channels, mc.image_size, mc.image_size)
    items = [(w, c, i) for w in ws for c in classes for i in range(n)]
    batches = _batches(items, spec, batch_size)

    def run_batch(b: int, ks: list[int]) -> torch.Tensor:
        chunk = [items[k] for k in ks]
        z = initial_noise(seed, [(c, i) for _, c, i in chunk], shape).to(device)
        c = torch.tensor([max(c, 0) for _, c, _ in chunk], dtype=torch.long, device=device)
        if b == 0 and hasattr(net, "check_inputs"):
            net.check_inputs(z, lams[0].expand(len(chunk)), c)
        if graphs is not None:
            return _graphed_batch(graphs, spec, method_options, counter, chunk, z, c, lams, options, sampler_spec,
                                  mc.num_classes, context, device)
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, "sampler", b, batch_size))
        guided = _guide(spec, method_options, counter, [w for w, _, _ in chunk], mc.num_classes, context, device)
        return sampler_spec.fn(guided, z, lams, c, generator=g, progress=False,
                               **_with_guidance_options(options, guided, spec, sampler_spec))

    graphs = _trajectory_graphs(device, sampler, options, spec, [counter, guide]) if cuda_graph else None
    # classifier guidance differentiates the classifier inside the loop: no_grad, not inference_mode
    with torch.no_grad() if spec.needs == "classifier" else torch.inference_mode():
        if compile or graphs is not None:
            _warm_up(run_batch, batches, items, spec, (counter, guide, grad), device)
        out, seconds = _timed(lambda b, ks: require_finite(run_batch(b, ks), net, guide_net), batches, items,
                              (mc.image_size, mc.image_size, mc.in_channels), device, progress, to_uint8)
    return {
        "x": out,
        "y": np.asarray([c for _, c, _ in items], dtype=np.int64),
        "w": np.asarray([w for w, _, _ in items], dtype=np.float32),
        # the guide's forwards count too: autoguidance pays them
        "nfe_per_image": counter.nfe_per_image(len(items))
        + (guide.nfe_per_image(len(items)) if guide is not None else 0.0),
        # classifier forward+backward passes per image (classifier guidance only)
        "classifier_evals_per_image": grad.rows / max(len(items), 1) if grad is not None else None,
        "seconds": seconds,
    }


def _sampler_options(sampler_spec, shorthands: dict[str, Any], sampler_options: dict[str, Any] | None) -> dict:
    """The sampler's options, checked: ``sampler_options``, plus generate's ``eta`` / ``v`` /
    ``clip_x`` shorthands where the sampler declares an option of that name."""
    options = {k: value for k, value in shorthands.items() if sampler_spec.option(k)}
    return sampler_spec.resolve({**options, **(sampler_options or {})})


def model_lam_grid(config, steps: int, device, kind: str = "u", schedule=None,
                   sigma_max: float | None = None) -> torch.Tensor:
    """The steps + 1 increasing log-SNRs of the model's schedule that the samplers walk, on the
    grid ``kind`` (``schedules.lam_grid``), from σ/α = ``sigma_max`` when given. ``schedule`` (a VDM's own, learned) replaces the config's;
    without it the schedule is ``schedules.schedule_of(config)``: an external model's own schedule
    object where its config carries one (a diffusers scheduler, whose "u" grid is its timesteps),
    else the (possibly shifted) schedule of [diffusion]."""
    from guidediff.schedules import lam_grid, schedule_of

    if schedule is None:
        schedule = schedule_of(config)
    return lam_grid(schedule, steps, kind=kind, sigma_max=sigma_max, device=device).detach()


def _with_guidance_options(options: dict, guided, spec, sampler_spec) -> dict:
    """The sampler options plus those the guided denoiser asks for (``guidance.Guided``), which the
    sampler must declare."""
    extra = getattr(guided, "sampler_options", {})
    unknown = sorted(set(extra) - {o.name for o in sampler_spec.options})
    require(not unknown, f"guidance {spec.name} with these options needs a sampler that takes {', '.join(unknown)} "
                         f"(e.g. sampler='ancestral'); sampler {sampler_spec.name!r} does not")
    return {**options, **extra}


def _guide(spec, options, denoiser, chunk_ws: list[float], num_classes: int, context, device, w=None):
    """The guided denoiser for one batch; a plain number for w when the batch shares one (so CFG can
    skip the uncond forward at w = 0 or the cond one at w = −1), else one weight per row."""
    if num_classes == 0 and spec.name == "cfg":
        return denoiser
    if w is None:
        values = set(chunk_ws)
        w = values.pop() if len(values) == 1 else torch.tensor(chunk_ws, device=device)
    return spec.build(denoiser, w, num_classes, context, **options)


def _trajectory_graphs(device, sampler: str, options: dict, spec, counters):
    """``cuda_graphs.TrajectoryGraphs`` when this sampling can be captured, else None (with a note why)."""
    from guidediff import cuda_graphs

    why = cuda_graphs.why_not_graphable(device, sampler=sampler, eta=options.get("eta", 0.0),
                                        classifier_guidance=spec.needs == "classifier",
                                        distilled=spec.name == "distilled")
    if why:
        cuda_graphs.note(why)
        return None
    return cuda_graphs.TrajectoryGraphs(counters)


def _graphed_batch(graphs, spec, method_options, counter, chunk, z, c, lams, options, sampler_spec, num_classes,
                   context, device) -> torch.Tensor:
    """One batch through a captured trajectory: w enters as a device tensor (a graph input), except
    the weights at which the method needs one forward (those batches get a graph of their own)."""
    chunk_ws = [w for w, _, _ in chunk]
    cheap = chunk_ws[0] if len(set(chunk_ws)) == 1 and chunk_ws[0] in spec.cheap_at else None
    wt = torch.tensor(chunk_ws, dtype=torch.float32, device=device)

    def trajectory(z: torch.Tensor, c: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        guided = _guide(spec, method_options, counter, chunk_ws, num_classes, context, device,
                        w=cheap if cheap is not None else wt)
        return sampler_spec.fn(guided, z, lams, c, generator=None, progress=False,
                               **_with_guidance_options(options, guided, spec, sampler_spec))

    return graphs.run((len(chunk), cheap), trajectory, z, c, wt)


def _warm_up(run_batch, batches, items, spec, counters, device) -> None:
    """Compilation happens on the first batch of each shape: run one batch per shape before the clock
    starts, then forget what the warm-up cost."""
    shapes: dict = {}
    for b, ks in enumerate(batches):
        ws = {items[k][0] for k in ks}
        one_forward = ws <= set(spec.cheap_at)
        shapes.setdefault((one_forward, len(ks), frozenset(ws) if one_forward else None), b)
    for b in shapes.values():
        run_batch(b, batches[b])
    for counter in counters:
        if counter is not None:
            for attr in ("calls", "evaluations", "rows"):
                if hasattr(counter, attr):
                    setattr(counter, attr, 0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run_batch, batches, items, image_shape, device, progress: bool, to_uint8) -> tuple[np.ndarray, float]:
    """Run every batch into a uint8 array; the seconds from the first batch to the last result."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="sampling", unit="img", leave=False)
    out = np.empty((len(items), *image_shape), dtype=np.uint8)
    start = time.perf_counter()
    for b, ks in enumerate(batches):
        out[ks] = to_uint8(run_batch(b, ks).clamp(-1, 1))
        if bar is not None:
            bar.update(len(ks))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return out, seconds


def grid_name(w: float) -> str:
    return f"grid_w{w:g}.png"


def save_samples(out_dir: str | Path, result: dict[str, Any], max_cols: int = 16) -> list[Path]:
    """Write samples.npz (x, y, w) and one PNG grid per w under out_dir; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / "samples.npz"
    np.savez(npz, x=result["x"], y=result["y"], w=result["w"])
    return [npz, *save_grids(out_dir, result, max_cols=max_cols)]


def save_grids(out_dir: str | Path, result: dict[str, Any], max_cols: int = 16, prefix: str = "") -> list[Path]:
    """One PNG per w: a row per class, its first max_cols samples (blank tiles where fewer)."""
    from guidediff.images import save_grid

    out_dir = Path(out_dir)
    x, y, w = result["x"], result["y"], result["w"]
    written = []
    for wv in dict.fromkeys(w.tolist()):
        at_w = w == wv
        classes = list(dict.fromkeys(y[at_w].tolist()))
        cols = min(max_cols, max(int((at_w & (y == c)).sum()) for c in classes))
        tiles = np.full((len(classes) * cols, *x.shape[1:]), 255, dtype=np.uint8)
        for r, c in enumerate(classes):
            picked = x[at_w & (y == c)][:cols]
            tiles[r * cols:r * cols + len(picked)] = picked
        written.append(save_grid(out_dir / f"{prefix}{grid_name(wv)}", tiles, len(classes), cols))
    return written
