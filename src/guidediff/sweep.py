"""The guidance sweep: sample a model at several guidance weights, evaluate every metric per
weight, and write sweep.json plus the CFG paper's trade-off figures."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guidediff.errors import UsageError, require


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


GRID_FILE = "grid_samples.npz"  # the few images per point behind grid_across_w.png
# what may differ between a sweep and its --resume: the machine and the results; every other entry
# of sweep.json is a setting the resumed sweep must share
NOT_SETTINGS = ("device", "torch", "commit", "compiled", "fid_floor", "points")


def _previous_points(out: Path, summary: dict) -> tuple[dict[float, dict], dict[float, tuple]]:
    """({knob value: point}, {knob value: grid images}) of the earlier sweep in ``out``, which must
    have used the settings in ``summary``; nothing when there is none."""
    path = out / "sweep.json"
    if not path.exists():
        return {}, {}
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path} is not valid JSON, so the sweep cannot be resumed; pass --overwrite to start "
                         "again") from None
    require(isinstance(old, dict) and isinstance(old.get("points"), list),
            f"{path} is not a guidediff sweep; pass --overwrite to start again")
    keys = (set(old) | set(summary)) - set(NOT_SETTINGS)
    changed = [f"{k} {old.get(k)!r} -> {summary.get(k)!r}" for k in sorted(keys) if old.get(k) != summary.get(k)]
    require(not changed, f"--resume: the sweep in {out} used other settings ({'; '.join(changed)}); rerun with its "
                         "settings, or pass --overwrite to start again")
    knob = summary["knob"]
    done = {float(p[knob]): p for p in old["points"] if isinstance(p, dict) and knob in p}
    grids = {}
    try:
        with np.load(out / GRID_FILE, allow_pickle=False) as z:
            for w in done:
                at = z["w"] == w
                if at.any():
                    grids[w] = (z["x"][at], z["y"][at], z["w"][at])
    except Exception:  # noqa: BLE001 - missing or cut-off file (zipfile/numpy errors vary): the grid misses
        pass  # those points; the numbers are what matter
    return done, grids


@dataclass
class SweepSettings:
    """What one guidance sweep does. ``n``, ``steps`` and ``out_dir`` are required; every other
    field has the default of ``guidediff sweep``."""

    n: int                                # images per knob value, split evenly over the classes (>= 10)
    steps: int                            # sampler steps per image
    out_dir: str | Path                   # sweep.json, grid_samples.npz and the figures go here
    sampler: str = "ddim"                 # a name in the sampler registry
    sampler_options: dict | None = None   # options the sampler declares (eta, clip_x, ...)
    grid: str = "u"                       # step grid: u, lambda or karras
    sigma_max: float | None = None        # the grid's start in sigma/alpha (EDM's 80); None: the schedule's
    seed: int = 0                         # seeds each knob value's sampling and guide_accuracy's noise
    device: str = "auto"                  # auto, cpu, cuda or cuda:N
    batch_size: int = 1000                # images per sampler call
    bf16: bool = True                     # bfloat16 autocast of the network (GPU)
    compile: bool = False                 # torch.compile the network (GPU)
    classifier: str | None = None         # the evaluation classifier; None: the shipped Fashion-MNIST one
    guidance: str = "cfg"                 # a name in the guidance registry; its knob is w or scale
    guidance_options: dict | None = None  # options the guidance method declares
    base: str | None = None               # classifier guidance: shorthand for guidance_options["base"]
    cg_form: str | None = None            # classifier guidance: shorthand for guidance_options["cg_form"]
    cfg_variant: dict | None = None       # {"name": method, **options}: a method swept over w in place of CFG
    guide_model: str | None = None        # autoguidance: the guide model (run dir, checkpoint or file)
    noisy_classifier: str | None = None   # classifier guidance's classifier; with CFG it only measures
    null_class: int | None = None         # a diffusers UNet2DModel's null label
    resume: bool = False                  # keep the points an earlier sweep with the same settings wrote


@dataclass
class _Prepared:
    """What every knob value of a sweep shares: the networks, the method and its options."""

    out: Path
    device: Any
    net: Any
    config: Any
    eval_net: Any
    guide: Any              # autoguidance's guide model, or None
    spec: Any               # the guidance registry entry
    options: dict           # the options given to generate
    shown: dict             # every option of the method with its value (recorded in sweep.json)
    guide_net: Any          # the noisy classifier, or None
    lam_clean: float | None  # λ at u = 0, where guide_accuracy asks the noisy classifier

    @property
    def knob(self) -> str:
        return self.spec.weight

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes


def run_sweep(model: str, ws: list[float], settings: SweepSettings | None = None, **fields: Any) -> dict:
    """Sample ``n`` images per w (split evenly over the classes), evaluate FID-FMNIST, IS-FMNIST,
    CAS, precision/recall and KID per w, and write the results and figures into ``out_dir``.

    ``settings`` is a ``SweepSettings``; keyword ``fields`` set or replace its fields
    (``run_sweep(model, [0, 3], n=1000, steps=50, out_dir="runs/sw")``). With
    ``guidance="classifier"`` the knob values in ``ws`` are classifier-guidance scales s and the
    points carry ``scale`` instead of ``w``. ``model`` may be a diffusers UNet2DModel directory."""
    s = _settings(settings, fields)
    run = _prepare(model, s)
    summary = _summary(model, s, run)
    points, grids = summary["points"], []
    done, kept_grids = _previous_points(run.out, summary) if s.resume else ({}, {})
    points.extend(p for w, p in done.items() if w not in ws)  # asked no more, still kept
    for w in ws:
        if w in done:
            points.append(done[w])
            if w in kept_grids:
                grids.append(kept_grids[w])
            print(f"{run.knob}={w:<5g} kept from the earlier sweep in {run.out}", flush=True)
            continue
        point, grid = _measure(run, s, w)
        points.append(point)
        grids.append(grid)
        summary["fid_floor"] = point["fid_floor"]
        # written after every w, so an interrupted sweep keeps what it measured (resume continues it)
        points.sort(key=lambda p: p[run.knob])
        np.savez(run.out / GRID_FILE, **{k: np.concatenate([g[i] for g in grids]) for i, k in enumerate("xyw")})
        (run.out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    points.sort(key=lambda p: p[run.knob])
    summary["fid_floor"] = summary["fid_floor"] if summary["fid_floor"] is not None else \
        next((p.get("fid_floor") for p in points), None)
    (run.out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    _figures(run, s, points, grids, summary["fid_floor"])
    return summary


def _settings(settings: SweepSettings | None, fields: dict[str, Any]) -> SweepSettings:
    names = [f.name for f in dataclasses.fields(SweepSettings)]
    unknown = sorted(set(fields) - set(names))
    require(not unknown, f"run_sweep has no setting {', '.join(unknown)}; its settings are {', '.join(names)}")
    if settings is not None:
        return dataclasses.replace(settings, **fields)
    missing = [name for name in ("n", "steps", "out_dir") if name not in fields]
    require(not missing, f"run_sweep needs {', '.join(missing)} (or a SweepSettings)")
    return SweepSettings(**fields)


def _prepare(model: str, s: SweepSettings) -> _Prepared:
    """Check the settings, load the networks and resolve the method's options."""
    import torch

    from guidediff.loading import load_guide_model, load_model
    from guidediff.guidance import get_guidance
    from guidediff.nets.fmnist_classifier import load_eval_classifier
    from guidediff.runtime import resolve_device

    require(s.n >= 10, f"n must be at least 10 (one image per class), got {s.n}")
    require(s.steps >= 1, f"steps must be >= 1, got {s.steps}")
    require(s.batch_size >= 1, f"batch_size must be >= 1, got {s.batch_size}")
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(s.device)
    net, config = load_model(model, device, null_class=s.null_class)
    require(config.model.num_classes > 0, "the sweep needs a class-conditional model (num_classes > 0)")
    eval_net = load_eval_classifier(s.classifier, device=device)
    guide = load_guide_model(s.guide_model, device, net) if s.guide_model is not None else None
    spec = get_guidance(s.guidance)
    options = dict(s.guidance_options or {})
    options.update({k: v for k, v in (("base", s.base), ("cg_form", s.cg_form)) if v is not None})
    shown = spec.resolve(options)
    guide_net, lam_clean = None, None
    require(spec.needs != "classifier" or s.noisy_classifier is not None,
            f"guidance {spec.name} needs a noisy classifier (noisy_classifier)")
    if s.noisy_classifier is not None:
        # with CFG the noisy classifier only measures (guide_accuracy): the control for CG's
        from guidediff.classifier_guidance import check_label_set, load_noisy_classifier
        from guidediff.schedules import schedule_of

        guide_net, _ = load_noisy_classifier(s.noisy_classifier, device)
        check_label_set(guide_net.num_classes, config.model.num_classes, str(s.noisy_classifier))
        lam_clean = float(schedule_of(config).lam(torch.zeros(1, dtype=torch.float64)))
    return _Prepared(out, device, net, config, eval_net, guide, spec, options, shown, guide_net, lam_clean)


def _summary(model: str, s: SweepSettings, run: _Prepared) -> dict:
    """sweep.json before its first point: the settings (what a resumed sweep must share) and the machine."""
    import torch

    from guidediff.checkpoint import git_commit

    return {
        "model": model,
        "n_per_w": s.n // run.num_classes * run.num_classes,
        "steps": s.steps,
        "sampler": s.sampler,
        "grid": s.grid,
        "sigma_max": s.sigma_max,  # an older sweep.json lacks it, which resume reads as None
        "seed": s.seed,
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "commit": git_commit(),
        "guidance": s.guidance,
        "knob": run.knob,
        **run.shown,
        "cfg_variant": s.cfg_variant,
        "guide_model": None if s.guide_model is None else str(s.guide_model),
        "null_class": s.null_class,
        "compiled": s.compile,
        "noisy_classifier": None if s.noisy_classifier is None else str(s.noisy_classifier),
        "fid_floor": None,
        "points": [],
    }


def _measure(run: _Prepared, s: SweepSettings, w: float) -> tuple[dict, tuple]:
    """(the point of knob value w, the few images per class it adds to the grid figure)."""
    from guidediff.generation import generate
    from guidediff.metrics.evaluate import evaluate_samples

    cg = run.spec.needs == "classifier"
    result = generate(
        run.net, run.config, classes=list(range(run.num_classes)), ws=[w], n=s.n // run.num_classes,
        sampler=s.sampler, steps=s.steps, grid=s.grid, sigma_max=s.sigma_max, seed=s.seed, device=run.device, batch_size=s.batch_size,
        bf16=s.bf16, progress=True, guidance=s.guidance, guidance_options=run.options,
        classifier=run.guide_net if cg else None, cfg_variant=s.cfg_variant, guide_net=run.guide, compile=s.compile,
        sampler_options=s.sampler_options,
    )
    images, labels = result["x"], result["y"]
    metrics = flatten_metrics(evaluate_samples(images, labels, classifier=run.eval_net, device=run.device))
    point = {run.knob: float(w), **metrics, "sec_per_image": result["seconds"] / len(images),
             "nfe_per_image": result.get("nfe_per_image")}
    if cg:
        point["classifier_evals_per_image"] = result.get("classifier_evals_per_image")
    if run.guide_net is not None:
        from guidediff.classifier_guidance import guide_accuracy

        # does guidance fool its classifier: compare with the evaluation classifier's CAS
        point["guide_accuracy"] = guide_accuracy(run.guide_net, images, labels, run.lam_clean, seed=s.seed)
    print(
        f"{run.knob}={w:<5g} FID-FMNIST {metrics['fid']:.2f} (floor {metrics['fid_floor']:.2f}, n={metrics['n']})  "
        f"IS {metrics['is']:.2f}  CAS {metrics['cas']:.3f}  P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  "
        f"{1e3 * point['sec_per_image']:.2f} ms/image",
        flush=True,
    )
    keep = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(run.num_classes)])
    return point, (images[keep], labels[keep], np.full(len(keep), w, dtype=np.float32))


def _figures(run: _Prepared, s: SweepSettings, points: list[dict], grids: list[tuple], fid_floor) -> None:
    """The CFG paper's FID-vs-IS trade-off, every metric against the knob, and a grid across it."""
    from guidediff import plots

    name, shown = run.spec.name, run.shown
    label = (f"CG ({shown['base']}, {shown['cg_form']})" if name == "classifier" else
             f"CFG {s.cfg_variant['name']}" if s.cfg_variant is not None else "CFG" if name == "cfg" else name)
    plots.fid_vs_is({label: points}, run.out / "fid_vs_is.png", knob=run.knob, fid_floor=fid_floor)
    plots.metrics_vs_knob(points, run.out / "metrics_vs_w.png", knob=run.knob, fid_floor=fid_floor)
    if grids:
        plots.grid_across_knob(*(np.concatenate([g[i] for g in grids]) for i in range(3)),
                               run.out / "grid_across_w.png")
    print(f"wrote {run.out / 'sweep.json'}, fid_vs_is.png, metrics_vs_w.png, grid_across_w.png")
