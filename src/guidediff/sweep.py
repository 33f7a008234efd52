"""The guidance sweep: sample a model at several guidance weights, evaluate every metric per
weight, and write sweep.json plus the CFG paper's trade-off figures."""

from __future__ import annotations

import json
from pathlib import Path

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


def run_sweep(
    model: str,
    ws: list[float],
    *,
    n: int,
    steps: int,
    out_dir: str | Path,
    sampler: str = "ddim",
    grid: str = "u",
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 1000,
    classifier: str | None = None,
    bf16: bool = True,
    guidance: str = "cfg",
    noisy_classifier: str | None = None,
    base: str | None = None,
    cg_form: str | None = None,
    cfg_variant: dict | None = None,
    guide_model: str | None = None,
    compile: bool = False,
    resume: bool = False,
    guidance_options: dict | None = None,
    sampler_options: dict | None = None,
    null_class: int | None = None,
) -> dict:
    """Sample ``n`` images per w (split evenly over the classes), evaluate FID-FMNIST, IS-FMNIST,
    CAS, precision/recall and KID per w, and write the results and figures into ``out_dir``.

    ``classifier`` is the evaluation classifier. With ``guidance="classifier"`` the knob values in
    ``ws`` are classifier-guidance scales s for the noisy classifier ``noisy_classifier`` (see
    ``generation.generate``); the points then carry ``scale`` instead of ``w``. ``cfg_variant`` (and
    for autoguidance ``guide_model``) swaps plain CFG for a later guidance method, swept over w.
    ``guidance`` may name any method of the guidance registry, with ``guidance_options``;
    ``sampler_options`` go to the sampler. ``resume`` keeps the points an earlier sweep with the
    same settings wrote into ``out_dir`` and samples only the missing weights. ``model`` may be a
    diffusers UNet2DModel directory; ``null_class`` is then its null label."""
    import torch

    from guidediff import plots
    from guidediff.checkpoint import git_commit, load_guide_model, load_model
    from guidediff.metrics.evaluate import evaluate_samples
    from guidediff.nets.fmnist_classifier import load_eval_classifier
    from guidediff.generation import generate
    from guidediff.runtime import resolve_device

    require(n >= 10, f"n must be at least 10 (one image per class), got {n}")
    require(steps >= 1, f"steps must be >= 1, got {steps}")
    require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    net, config = load_model(model, device, null_class=null_class)
    num_classes = config.model.num_classes
    require(num_classes > 0, "the sweep needs a class-conditional model (num_classes > 0)")
    per_class = n // num_classes
    eval_net = load_eval_classifier(classifier, device=device)
    guide = load_guide_model(guide_model, device, net) if guide_model is not None else None
    from guidediff.guidance import get_guidance

    spec = get_guidance(guidance)
    cg = spec.needs == "classifier"
    knob = spec.weight
    options = dict(guidance_options or {})
    options.update({k: v for k, v in (("base", base), ("cg_form", cg_form)) if v is not None})
    shown = spec.resolve(options)
    guide_net = None
    require(not cg or noisy_classifier is not None, f"guidance {spec.name} needs a noisy classifier (noisy_classifier)")
    if noisy_classifier is not None:
        # with CFG the noisy classifier only measures (guide_accuracy): the control for CG's
        from guidediff.classifier_guidance import check_label_set, load_noisy_classifier
        from guidediff.schedules import schedule_of

        guide_net, _ = load_noisy_classifier(noisy_classifier, device)
        check_label_set(guide_net.num_classes, num_classes, str(noisy_classifier))
        lam_clean = float(schedule_of(config).lam(torch.zeros(1, dtype=torch.float64)))

    summary = {
        "model": model,
        "n_per_w": per_class * num_classes,
        "steps": steps,
        "sampler": sampler,
        "grid": grid,
        "seed": seed,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "commit": git_commit(),
        "guidance": guidance,
        "knob": knob,
        **shown,
        "cfg_variant": cfg_variant,
        "guide_model": None if guide_model is None else str(guide_model),
        "null_class": null_class,
        "compiled": compile,
        "noisy_classifier": None if noisy_classifier is None else str(noisy_classifier),
        "fid_floor": None,
        "points": [],
    }
    points, grids = summary["points"], []
    done, kept_grids = _previous_points(out, summary) if resume else ({}, {})
    points.extend(p for w, p in done.items() if w not in ws)  # asked no more, still kept
    for w in ws:
        if w in done:
            points.append(done[w])
            if w in kept_grids:
                grids.append(kept_grids[w])
            print(f"{knob}={w:<5g} kept from the earlier sweep in {out}", flush=True)
            continue
        result = generate(
            net, config, classes=list(range(num_classes)), ws=[w], n=per_class, sampler=sampler,
            steps=steps, grid=grid, seed=seed, device=device, batch_size=batch_size, bf16=bf16, progress=True,
            guidance=guidance, guidance_options=options, classifier=guide_net if cg else None,
            cfg_variant=cfg_variant, guide_net=guide, compile=compile, sampler_options=sampler_options,
        )
        seconds = result["seconds"]
        images, labels = result["x"], result["y"]
        metrics = flatten_metrics(evaluate_samples(images, labels, classifier=eval_net, device=device))
        point = {knob: float(w), **metrics, "sec_per_image": seconds / len(images), "nfe_per_image": result.get("nfe_per_image")}
        if cg:
            point["classifier_evals_per_image"] = result.get("classifier_evals_per_image")
        if guide_net is not None:
            from guidediff.classifier_guidance import guide_accuracy

            # does guidance fool its classifier: compare with the evaluation classifier's CAS
            point["guide_accuracy"] = guide_accuracy(guide_net, images, labels, lam_clean, seed=seed)
        points.append(point)
        print(
            f"{knob}={w:<5g} FID-FMNIST {metrics['fid']:.2f} (floor {metrics['fid_floor']:.2f}, n={metrics['n']})  "
            f"IS {metrics['is']:.2f}  CAS {metrics['cas']:.3f}  P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  "
            f"{1e3 * point['sec_per_image']:.2f} ms/image",
            flush=True,
        )
        summary["fid_floor"] = point["fid_floor"]
        keep = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(num_classes)])
        grids.append((images[keep], labels[keep], np.full(len(keep), w, dtype=np.float32)))
        # written after every w, so an interrupted sweep keeps what it measured (--resume continues it)
        points.sort(key=lambda p: p[knob])
        np.savez(out / GRID_FILE, **{k: np.concatenate([g[i] for g in grids]) for i, k in enumerate("xyw")})
        (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    points.sort(key=lambda p: p[knob])
    summary["fid_floor"] = summary["fid_floor"] if summary["fid_floor"] is not None else \
        next((p.get("fid_floor") for p in points), None)
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")

    fid_floor = summary["fid_floor"]
    label = (f"CG ({shown['base']}, {shown['cg_form']})" if spec.name == "classifier" else
             f"CFG {cfg_variant['name']}" if cfg_variant is not None else "CFG" if spec.name == "cfg" else spec.name)
    plots.fid_vs_is({label: points}, out / "fid_vs_is.png", knob=knob, fid_floor=fid_floor)
    plots.metrics_vs_knob(points, out / "metrics_vs_w.png", knob=knob, fid_floor=fid_floor)
    if grids:
        plots.grid_across_knob(*(np.concatenate([g[i] for g in grids]) for i in range(3)), out / "grid_across_w.png")
    print(f"wrote {out / 'sweep.json'}, fid_vs_is.png, metrics_vs_w.png, grid_across_w.png")
    return summary
