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
    guidance_options: dict | None = None,
    sampler_options: dict | None = None,
) -> dict:
    """Sample ``n`` images per w (split evenly over the classes), evaluate FID-FMNIST, IS-FMNIST,
    CAS, precision/recall and KID per w, and write the results and figures into ``out_dir``.

    ``classifier`` is the evaluation classifier. With ``guidance="classifier"`` the knob values in
    ``ws`` are classifier-guidance scales s for the noisy classifier ``noisy_classifier`` (see
    ``generation.generate``); the points then carry ``scale`` instead of ``w``. ``cfg_variant`` (and
    for autoguidance ``guide_model``) swaps plain CFG for a later guidance method, swept over w.
    ``guidance`` may name any method of the guidance registry, with ``guidance_options``;
    ``sampler_options`` go to the sampler."""
    import torch

    from guidediff import plots
    from guidediff.checkpoint import git_commit, load_model
    from guidediff.metrics.evaluate import evaluate_samples
    from guidediff.nets.fmnist_classifier import load_eval_classifier
    from guidediff.generation import generate
    from guidediff.runtime import resolve_device

    require(n >= 10, f"n must be at least 10 (one image per class), got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    net, config = load_model(model, device)
    num_classes = config.model.num_classes
    require(num_classes > 0, "the sweep needs a class-conditional model (num_classes > 0)")
    per_class = n // num_classes
    eval_net = load_eval_classifier(classifier, device=device)
    guide = load_model(guide_model, device)[0] if guide_model is not None else None
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
        from guidediff.noisy_classifier_training import lam_range

        guide_net, _ = load_noisy_classifier(noisy_classifier, device)
        check_label_set(guide_net.num_classes, num_classes, str(noisy_classifier))
        lam_clean = lam_range(config.diffusion)[1]

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
        "compiled": compile,
        "noisy_classifier": None if noisy_classifier is None else str(noisy_classifier),
        "fid_floor": None,
        "points": [],
    }
    points, grids = summary["points"], []
    for w in ws:
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
        # written after every w, so an interrupted sweep keeps what it measured
        (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
        keep = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(num_classes)])
        grids.append((images[keep], labels[keep], np.full(len(keep), w, dtype=np.float32)))

    fid_floor = summary["fid_floor"]
    label = (f"CG ({shown['base']}, {shown['cg_form']})" if spec.name == "classifier" else
             f"CFG {cfg_variant['name']}" if cfg_variant is not None else "CFG" if spec.name == "cfg" else spec.name)
    plots.fid_vs_is({label: points}, out / "fid_vs_is.png", knob=knob, fid_floor=fid_floor)
    plots.metrics_vs_knob(points, out / "metrics_vs_w.png", knob=knob, fid_floor=fid_floor)
    plots.grid_across_knob(
        np.concatenate([g[0] for g in grids]), np.concatenate([g[1] for g in grids]), np.concatenate([g[2] for g in grids]),
        out / "grid_across_w.png",
    )
    print(f"wrote {out / 'sweep.json'}, fid_vs_is.png, metrics_vs_w.png, grid_across_w.png")
    return summary
