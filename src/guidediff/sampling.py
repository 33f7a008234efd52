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

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guidediff.errors import require


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a stable function of its parts, e.g. (seed, "noise", step)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    require(device.type != "cuda" or torch.cuda.is_available(),
            "CUDA was asked for but no GPU is visible; pass --device cpu")
    return device


def initial_noise(seed: int, items: list[tuple[int, int]], shape: tuple[int, ...]) -> torch.Tensor:
    """z_1 ~ N(0, I) for each (class, index) item, each from its own seeded CPU generator."""
    g = torch.Generator()
    out = torch.empty((len(items), *shape))
    for k, (c, i) in enumerate(items):
        g.manual_seed(derive_seed(seed, "z", c, i))
        out[k] = torch.randn(shape, generator=g)
    return out


CFG_VARIANTS = ("interval", "rescale", "apg", "autoguidance")


def guided_cfg(denoiser, w, null_class: int, variant: dict[str, Any] | None, guide=None):
    """Plain CFG, or the variant that ``variant`` names, with its knobs (guidance.py).
    Autoguidance takes its guide denoiser as ``guide``."""
    from guidediff import guidance

    if variant is None:
        return guidance.cfg(denoiser, w, null_class)
    options = dict(variant)
    name = options.pop("name", None)
    require(name in CFG_VARIANTS, f"unknown CFG variant {name!r}; choose one of {', '.join(CFG_VARIANTS)}")
    if name == "autoguidance":
        require(guide is not None, "autoguidance needs a guide model; pass --guide-model (an early or smaller "
                                   "checkpoint of the same kind of model)")
        return guidance.autoguidance(denoiser, guide, w)
    if name == "interval":
        return guidance.cfg_interval(denoiser, w, null_class, **options)
    if name == "rescale":
        return guidance.cfg_rescale(denoiser, w, null_class, **options)
    return guidance.apg(denoiser, w, null_class, **options)


def generate(
    net: torch.nn.Module,
    config,
    classes: list[int],
    ws: list[float],
    n: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    eta: float = 0.0,
    v: float = 0.3,
    clip_x: float | None = 1.0,
    bf16: bool | None = None,
    channels_last: bool | None = None,
    progress: bool = True,
    guidance: str = "cfg",
    classifier: torch.nn.Module | None = None,
    base: str = "uncond",
    cg_form: str = "score",
    cfg_variant: dict[str, Any] | None = None,
    guide_net: torch.nn.Module | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """n samples for every (w, class), in that order.

    ``guidance="classifier"`` runs classifier guidance with the noisy ``classifier``
    (``nets.noisy_classifier``) instead of CFG: the values in ``ws`` are then the scales s, on the
    ``base`` "uncond" (null-token) or "cond" prediction, in the DDIM/score form
    ε̃ = ε − s·σ·∇log p(c|z) (``cg_form="score"``, any sampler) or the ancestral mean form
    μ̃ + s·Σ·∇log p(c|z) (``cg_form="mean"``, sampler "ancestral"). The result's ``w`` holds s.

    ``cfg_variant`` replaces plain CFG by one of the later guidance methods (see
    ``guided_cfg``): {"name": "interval", "lam_lo", "lam_hi"}, {"name": "rescale", "phi"} or
    {"name": "apg", "eta", "momentum", "norm_threshold"}, or {"name": "autoguidance"} with the
    guide network ``guide_net`` (same image shape and label set as ``net``).

    ``compile`` runs the networks through ``torch.compile`` (on CUDA about 3x faster for the
    Fashion-MNIST UNet; the first batch of each shape pays the compilation).

    Returns x uint8 [N, H, W, C], y int64 (the asked class, −1 when unconditional), w float32,
    plus the cost: nfe_per_image (network evaluations per image; a guided step costs 2) and
    seconds. ``bf16``/``channels_last`` default to on for CUDA.
    """
    from guidediff.data.images import to_uint8
    from guidediff.guidance import CountingDenoiser, classifier_guidance, classifier_mean_shift, unconditional
    from guidediff.samplers import SAMPLERS, sample
    from guidediff.schedules import lam_grid, make_schedule

    require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    require(isinstance(n, int) and n >= 1, f"n must be a positive integer, got {n!r}")
    require(isinstance(steps, int) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    require(batch_size >= 1, f"batch size must be >= 1, got {batch_size}")
    mc = config.model
    num_classes = mc.num_classes
    require(guidance in ("cfg", "classifier"), f"unknown guidance {guidance!r}; choose cfg or classifier")
    cg = guidance == "classifier"
    if cg:
        from guidediff.classifier_guidance import check_label_set, classifier_grad_log_prob

        require(classifier is not None, "classifier guidance needs a noisy classifier; pass --classifier PATH")
        require(num_classes > 0, "classifier guidance needs a class-conditional model's label set, but this model "
                                 "is unconditional (num_classes = 0)")
        check_label_set(classifier.num_classes, num_classes)
        cc = classifier.config
        require((cc.image_size, cc.in_channels) == (mc.image_size, mc.in_channels),
                f"the classifier takes {cc.in_channels}x{cc.image_size}x{cc.image_size} images but the model makes "
                f"{mc.in_channels}x{mc.image_size}x{mc.image_size}; train the classifier on the model's dataset")
        require(base in ("uncond", "cond"), f"unknown base {base!r}; choose uncond or cond")
        require(cg_form in ("score", "mean"), f"unknown classifier-guidance form {cg_form!r}; choose score or mean")
        require(cg_form == "score" or sampler == "ancestral",
                "the mean form of classifier guidance shifts the ancestral sampler's mean; use --sampler ancestral "
                "or --cg-form score")
    if num_classes == 0:
        require(all(w == 0.0 for w in ws), "the model is unconditional, so there is nothing to guide: use w = 0")
        classes = [-1]
    device = resolve_device(device)
    cuda = device.type == "cuda"
    bf16 = cuda if bf16 is None else bf16
    channels_last = cuda if channels_last is None else channels_last
    # a distilled student (guidance distillation) takes w as an input: one forward per step
    from guidediff.nets.w_conditioned import WConditionedUNet

    student_w: dict[str, torch.Tensor] = {}
    distilled = isinstance(net, WConditionedUNet)
    require(not distilled or (not cg and cfg_variant is None),
            "this model is a distilled student: it applies w itself, so leave out --guidance classifier and "
            "--cfg-variant")
    autoguided = cfg_variant is not None and cfg_variant.get("name") == "autoguidance"
    require(guide_net is None or autoguided, "a guide model is only used by the autoguidance variant")
    if autoguided:
        require(guide_net is not None, "autoguidance needs a guide model; pass --guide-model")
        require(not cg, "autoguidance replaces CFG's unconditional prediction; it does not combine with "
                        "classifier guidance")
        require(not isinstance(guide_net, WConditionedUNet),
                "the guide model is a distilled student; autoguidance needs an ordinary (earlier or smaller) model")
        gm = guide_net.config if hasattr(guide_net, "config") else None
        require(gm is None or (gm.image_size, gm.in_channels, gm.num_classes)
                == (mc.image_size, mc.in_channels, mc.num_classes),
                "the guide model must make the same images with the same label set as the model; train it "
                "on the same data (an early or smaller checkpoint of the same run)")

    def as_denoiser(module: torch.nn.Module, takes_w: bool = False) -> CountingDenoiser:
        module = module.to(device).eval()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        forward = torch.compile(module, dynamic=False) if compile else module

        def network(z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            if channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if takes_w:
                    return forward(z, lam, c, student_w["w"]).float()
                return forward(z, lam, c).float()

        return CountingDenoiser(network)

    counter = as_denoiser(net, takes_w=distilled)
    guide_counter = as_denoiser(guide_net) if autoguided else None
    grad_log_prob, classifier_rows = None, [0]
    if cg:
        classifier = classifier.to(device).eval().requires_grad_(False)
        clf_grad = classifier_grad_log_prob(torch.compile(classifier, dynamic=False) if compile else classifier,
                                            bf16=bf16)

        def grad_log_prob(z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            classifier_rows[0] += z.shape[0]
            return clf_grad(z, lam, c)
    # a VDM brings its own (learned) schedule; every other model trained with the config's
    schedule = getattr(net, "schedule", None)
    if schedule is None:
        schedule = make_schedule(config.diffusion.schedule, config.diffusion.lam_min, config.diffusion.lam_max)
    lams = lam_grid(schedule, steps, device=device).detach()
    shape = (mc.in_channels, mc.image_size, mc.image_size)
    items = [(w, c, i) for w in ws for c in classes for i in range(n)]
    null = num_classes  # the null token; an unconditional net ignores c
    # images live in [-1, 1]: clip x̂ there (see samplers._predict for why it matters at λ_min)
    options = {"eta": eta} if sampler == "ddim" else {"v": v}
    options["clip_x"] = clip_x
    # w = 0 and w = −1 need one forward per step, any other w two: never batch the kinds together
    kinds: dict[float | None, list[int]] = {}
    plain = not cg and cfg_variant is None and not distilled
    for k, (w, _, _) in enumerate(items):
        kinds.setdefault(w if plain and w in (0.0, -1.0) else None, []).append(k)
    batches = [ks[lo:lo + batch_size] for ks in kinds.values() for lo in range(0, len(ks), batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="sampling", unit="img", leave=False)
    out = np.empty((len(items), mc.image_size, mc.image_size, mc.in_channels), dtype=np.uint8)

    def run_batch(b: int, ks: list[int]) -> torch.Tensor:
        chunk = [items[k] for k in ks]
        z = initial_noise(seed, [(c, i) for _, c, i in chunk], shape).to(device)
        c = torch.tensor([max(c, 0) for _, c, _ in chunk], dtype=torch.long, device=device)
        if b == 0 and hasattr(net, "check_inputs"):
            net.check_inputs(z, lams[0].expand(len(chunk)), c)
        w_values = {w for w, _, _ in chunk}
        # a plain number lets cfg skip the uncond forward (w = 0) or the cond one (w = −1)
        w = w_values.pop() if len(w_values) == 1 else torch.tensor([w for w, _, _ in chunk], device=device)
        step_options = dict(options)
        if cg:
            guided = unconditional(counter, null) if base == "uncond" else counter
            if cg_form == "mean":
                step_options["mean_shift"] = classifier_mean_shift(grad_log_prob, w)
            else:
                guided = classifier_guidance(guided, grad_log_prob, w)
        elif distilled:
            student_w["w"] = torch.tensor([w for w, _, _ in chunk], dtype=torch.float32, device=device)
            guided = counter
        else:
            guided = counter if num_classes == 0 else guided_cfg(counter, w, null, cfg_variant, guide_counter)
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, "sampler", b, batch_size))
        return sample(guided, z, lams, c, sampler=sampler, generator=g, **step_options)

    # classifier guidance differentiates the classifier inside the loop: no_grad, not inference_mode
    with torch.no_grad() if cg else torch.inference_mode():
        if compile:
            # compilation happens on the first batch of each shape: do it before the clock starts,
            # then forget what the warm-up cost
            shapes = {}
            for b, ks in enumerate(batches):
                one_forward = plain and {items[k][0] for k in ks} <= {0.0, -1.0}
                shapes.setdefault((one_forward, len(ks)), b)
            for b in shapes.values():
                run_batch(b, batches[b])
            for cnt in (counter, guide_counter):
                if cnt is not None:
                    cnt.calls = cnt.evaluations = 0
            classifier_rows[0] = 0
            if cuda:
                torch.cuda.synchronize(device)
        start = time.perf_counter()
        for b, ks in enumerate(batches):
            out[ks] = to_uint8(run_batch(b, ks).clamp(-1, 1))
            if bar is not None:
                bar.update(len(ks))
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return {
        "x": out,
        "y": np.asarray([c for _, c, _ in items], dtype=np.int64),
        "w": np.asarray([w for w, _, _ in items], dtype=np.float32),
        # the guide's forwards count too: autoguidance pays them
        "nfe_per_image": counter.nfe_per_image(len(items))
        + (guide_counter.nfe_per_image(len(items)) if guide_counter is not None else 0.0),
        # classifier forward+backward passes per image (classifier guidance only)
        "classifier_evals_per_image": classifier_rows[0] / max(len(items), 1) if cg else None,
        "seconds": seconds,
    }


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
