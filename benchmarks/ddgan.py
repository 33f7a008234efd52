"""Denoising diffusion GANs (Xiao et al. 2022) on the project's three benchmarks, in one script.

Parts (choose with --parts; each trains its own DDGAN for a time or step budget, then evaluates):

  gaussians25  DDGAN on the 25-Gaussians (paper Fig. 6) at T = --toy-T (2 4): modes covered and the
               share of high-quality samples (within 3σ of a mode), against DDIM at the same NFE
               driven by (a) the EXACT score of the mixture (guidediff.toy's closed form: an upper
               bound for any trained diffusion model at that NFE) and (b) the project's 2-D MLP
               denoiser trained with the ε-loss. Figure ddgan_gaussians25.png.
  stacked      DDGAN on stacked Fashion-MNIST (1000 modes): modes covered and KL(histogram ‖ uniform)
               over --n-stacked (26k) samples, each channel classified by the evaluation classifier.
  fmnist       DDGAN at T = --fmnist-T (1 2 4 8): FID-FMNIST (with its real-data floor), precision,
               recall and seconds per image over --n-eval samples. Grids ddgan_fmnist_T{T}.png.
  diffusion    the reference CFG model (--cfg-model, w = 0) with --diffusion-samplers (DDIM) at --nfe (4 10 50)
               steps on the same metrics.

Results merge into <out>/ddgan.json (out: --out, else $BENCH_OUT, else benchmarks/results), so the
parts can run in separate calls; --merge A.json B.json combines files written elsewhere. Parts that
need the evaluation classifier or the CFG model say so and are skipped when those are missing.

CPU smoke run (tiny networks, a few steps):
    python benchmarks/ddgan.py --tiny --classifier CLS.safetensors --cfg-model RUN_DIR --out /tmp/ddgan_bench
GPU, three calls of under 10 minutes (docs/ddgan.md):
    python benchmarks/ddgan.py --parts gaussians25 stacked diffusion --toy-minutes 0.75 --stacked-minutes 2.5 --cfg-model fmnist-cfg --data-dir .data --out $OUT
    python benchmarks/ddgan.py --parts fmnist --fmnist-T 1 2 --minutes 3.5 --data-dir .data --out $OUT
    python benchmarks/ddgan.py --parts fmnist --fmnist-T 4 8 --minutes 3.5 --data-dir .data --out $OUT
    python benchmarks/ddgan.py --merge A/ddgan.json B/ddgan.json C/ddgan.json --out benchmarks/results
Runs longer than one call: keep --work-dir inside the repo's ignored runs/ (it stays on a warm
machine between calls) and pass --resume; each call trains the part's minutes more, up to its steps:
    python benchmarks/ddgan.py --parts stacked --stacked-minutes 2.5 --set train.r1_every=4 --data-dir .data --work-dir runs/ddgan_bench --resume --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from guidediff.ddgan.config import load_config  # noqa: E402
from guidediff.ddgan.modes import grid_coverage, stacked_coverage  # noqa: E402
from guidediff.ddgan.sample import generate, load_generator  # noqa: E402
from guidediff.ddgan.train import train  # noqa: E402
from guidediff.errors import UsageError  # noqa: E402

PARTS = ("gaussians25", "stacked", "fmnist", "diffusion")
# --tiny: a few steps and samples per part (a CPU smoke run); flags given beside it keep their values
TINY_SIZES = {"minutes": None, "steps": 20, "n_eval": 200, "nfe": [2], "fmnist_T": [1, 2], "batch_size": 16,
              "sample_batch": 100, "toy_minutes": None, "toy_steps": 100, "n_toy": 2000, "toy_diffusion_steps": 50,
              "stacked_minutes": None, "stacked_steps": 10, "n_stacked": 500}
TINY_NETS = ["generator.base_channels=32", "generator.channel_mult=[1, 2]", "generator.num_res_blocks=1",
             "generator.attention_resolutions=[]", "discriminator.base_channels=16",
             "discriminator.channel_mult=[1, 2]"]


def log(msg: str) -> None:
    print(msg, flush=True)


def train_run(data: str, T: int, run_dir: Path, args, overrides: list[str], minutes: float | None,
              steps: int) -> tuple[object, object]:
    """Train one DDGAN and load its EMA generator: a fresh run directory, or with --resume the
    continuation of the one there (`minutes` more, up to `steps` in all)."""
    import shutil

    from guidediff.checkpoint import latest_checkpoint

    items = [f"diffusion.T={T}", f"train.steps={steps}", f'train.device="{args.device}"'] + overrides
    if minutes:
        items.append(f"train.minutes={minutes}")
    if data != "grid25":
        items.append(f"train.batch_size={args.batch_size}")
        if args.data_dir:
            items.append(f'data.data_dir="{args.data_dir}"')
        if args.tiny:
            items += TINY_NETS
    config = load_config(data, None, items + list(args.set if data != "grid25" else []))
    resume = args.resume and latest_checkpoint(run_dir / "checkpoints") is not None
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    result = train(config, run_dir, resume=resume, progress=False, command="benchmarks/ddgan.py")
    result.training_time_s = training_time(result.checkpoint)
    log(f"  trained {data} T={T}: {'resumed, ' if resume else ''}{result.step} steps in all, this call "
        f"{result.elapsed_s:.0f} s ({result.steps_per_sec or 0:.1f} steps/s), {result.training_time_s:.0f} s of "
        f"training in all, stopped by {result.stopped_by}, last {result.last}")
    G, saved = load_generator(result.model_file, device=args.device)
    return result, (G, saved)


def training_time(checkpoint: Path) -> float:
    """Seconds of training over every call that built this checkpoint (its state.json)."""
    return float(json.loads((Path(checkpoint) / "state.json").read_text()).get("training_time_s", 0.0))


def timed_generate(G, config, n: int, args) -> dict:
    # warm-up (allocator, cuDNN autotuning), then the timed run
    generate(G, config, min(n, args.sample_batch), seed=123, device=args.device, batch_size=args.sample_batch)
    return generate(G, config, n, seed=0, device=args.device, batch_size=args.sample_batch)


# -- parts -----------------------------------------------------------------------------------------

def part_gaussians25(args, work: Path, out: Path) -> dict:
    """DDGAN at each --toy-T against DDIM at the same NFE (exact score; trained MLP denoiser).
    The top-level numbers are those of the first T; "runs" holds every T."""
    from guidediff.data.toy2d import grid25
    from guidediff.samplers import sample_ddim
    from guidediff.schedules import CFGSchedule, lam_grid

    mix = grid25()
    means, std = mix.means.numpy(), float(mix.covs[0, 0, 0].sqrt())
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.n_toy, 2, generator=g, dtype=torch.float64)
    c = torch.full((args.n_toy,), mix.null_class, dtype=torch.long)  # unconditional: the null token
    mlp_net, mlp_seconds = None, None
    if args.toy_diffusion_steps > 0:
        # A trained diffusion model: the project's 2-D MLP denoiser (nets/mlp.py) trained with the
        # ε-loss (toy.run.train_toy_denoiser).
        from guidediff.toy.run import train_toy_denoiser

        t0 = time.perf_counter()
        mlp_net = train_toy_denoiser(mix, steps=args.toy_diffusion_steps, log=None)
        mlp_seconds = round(time.perf_counter() - t0, 1)
    runs, rows = [], []
    for T in args.toy_T:
        result, (G, config) = train_run("grid25", T, work / f"grid25_T{T}", args, [], args.toy_minutes, args.toy_steps)
        samples = generate(G, config, args.n_toy, seed=0, device=args.device)
        ours = grid_coverage(samples["x"], means, std)
        # DDIM (η = 0) at the same NFE on the library's default CFG schedule, λ ∈ [−20, 20].
        lams = lam_grid(CFGSchedule(), T, dtype=torch.float64)
        x_ddim = sample_ddim(mix, z, lams, c).numpy()
        base = grid_coverage(x_ddim, means, std)
        baselines = [{"method": "ddim-exact-score", "nfe": T, "modes": base["modes"],
                      "high_quality_share": base["high_quality_share"]}]
        panels = [("data", None, None), (f"DDGAN, T = {T}", samples["x"], ours),
                  (f"DDIM, exact score, {T} NFE", x_ddim, base)]
        if mlp_net is not None:
            with torch.no_grad():
                mlp_eps = lambda zz, lam, cc: mlp_net(zz.float(), lam.float(), cc).double()  # noqa: E731
                x_mlp = sample_ddim(mlp_eps, z, lams, c).numpy()
            mlp = grid_coverage(x_mlp, means, std)
            baselines.append({"method": "ddim-trained-mlp", "nfe": T, "modes": mlp["modes"],
                              "high_quality_share": mlp["high_quality_share"],
                              "train_steps": args.toy_diffusion_steps, "train_seconds": mlp_seconds})
            panels.append((f"DDIM, trained MLP, {T} NFE", x_mlp, mlp))
        runs.append({"T": T, "nfe": T, "modes": ours["modes"], "high_quality_share": ours["high_quality_share"],
                     "n": ours["n"], "steps": result.step, "train_seconds": round(result.elapsed_s, 1),
                     "baselines": baselines})
        rows.append(panels)
        log(f"  25-Gaussians T={T}: DDGAN {ours['modes']}/25 modes, {ours['high_quality_share']:.1%} high quality; "
            + "; ".join(f"{b['method']} {b['modes']}/25, {b['high_quality_share']:.1%}" for b in baselines))
    _figure_gaussians(out / "ddgan_gaussians25.png", mix, rows, args.n_toy)
    return {**{k: v for k, v in runs[0].items()}, "exact_score_note": "DDIM driven by the closed-form score of the "
            "mixture: an upper bound for any trained diffusion model with that sampler and NFE", "runs": runs}


def _figure_gaussians(path: Path, mix, rows: list, n: int) -> None:
    """One row per T: data, DDGAN, and the DDIM baselines at the same NFE."""
    from guidediff.plots import _pyplot

    plt = _pyplot()
    data = mix.sample(n, generator=torch.Generator().manual_seed(1))[0].numpy()
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.3 * cols, 3.4 * len(rows)), squeeze=False)
    for r, panels in enumerate(rows):
        for ax, (title, x, cov) in zip(axes[r], panels):
            x = data if x is None else x
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.25)
            if cov is not None:
                title += f"\n{cov['modes']}/25 modes, {cov['high_quality_share']:.0%} high quality"
            ax.set_title(title, fontsize=9)
            ax.set_xlim(-2.1, 2.1)
            ax.set_ylim(-2.1, 2.1)
            ax.set_aspect("equal")
        for ax in axes[r][len(panels):]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log(f"  wrote {path}")


def part_stacked(args, work: Path, out: Path, classifier) -> dict | None:
    if classifier is None:
        log("  stacked: skipped (no evaluation classifier; pass --classifier PATH)")
        return None
    result, (G, config) = train_run("stacked-fmnist", args.stacked_T, work / "stacked", args, [],
                                    args.stacked_minutes, args.stacked_steps)
    samples = generate(G, config, args.n_stacked, seed=0, device=args.device, batch_size=args.sample_batch)
    cov = stacked_coverage(samples["x"], classifier, device=args.device)
    _grid(out / "ddgan_stacked.png", samples["x"])
    reference = stacked_data_reference(args.n_stacked, classifier, args.device, args.data_dir)
    log(f"  stacked FMNIST: {cov['modes']}/1000 modes, KL {cov['kl']:.3f} over n={cov['n']} (the data through the "
        f"same classifier: {reference['modes']} modes, KL {reference['kl']:.3f}); the KL's parts: channel "
        f"marginals {', '.join(f'{v:.3f}' for v in cov['kl_marginals'])}, total correlation "
        f"{cov['total_correlation']:.3f}")
    return {**cov, "T": config.diffusion.T, "steps": result.step, "train_seconds": round(result.training_time_s, 1),
            "steps_per_sec": result.steps_per_sec, "config": config.to_dict()["train"], "data_reference": reference}


def stacked_data_reference(n: int, classifier, device: str, data_dir: str | None) -> dict:
    """Modes and KL of n real stacked test images through the same classifier: what a perfect
    generator would score (finite n and the classifier's confusions keep KL above 0)."""
    from guidediff.data.fmnist import load_fmnist
    from guidediff.data.stacked import make_stacked_fmnist

    images, labels = load_fmnist("test", data_dir)
    x, _ = make_stacked_fmnist(images, labels, n, seed=0)
    return {**stacked_coverage(x, classifier, device=device), "split": "test", "seed": 0}


def part_fmnist(args, work: Path, out: Path, classifier) -> Iterator[dict]:
    from guidediff.ddgan.diagnostics import discriminator_report
    from guidediff.metrics.evaluate import evaluate_samples

    if classifier is None:
        log("  fmnist: skipped (no evaluation classifier; pass --classifier PATH)")
        return
    for T in args.fmnist_T:
        result, (G, config) = train_run("fmnist", T, work / f"fmnist_T{T}", args, [], args.minutes, args.steps)
        samples = timed_generate(G, config, args.n_eval, args)
        metrics = evaluate_samples(samples["x"], None, classifier, device=args.device, data_dir=args.data_dir)
        _grid(out / f"ddgan_fmnist_T{T}.png", samples["x"])
        entry = {"method": "ddgan", "T": T, "nfe": T, "fid": metrics["fid"], "fid_floor": metrics["fid_floor"],
                 "precision": metrics["precision"], "recall": metrics["recall"], "n": metrics["n"],
                 "sec_per_image": samples["seconds"] / len(samples["x"]), "steps": result.step,
                 "train_seconds": round(result.training_time_s, 1), "steps_per_sec": result.steps_per_sec}
        log(f"  DDGAN T={T}: FID-FMNIST {entry['fid']:.2f} (floor {entry['fid_floor']:.2f}), recall "
            f"{entry['recall']:.3f}, {entry['sec_per_image'] * 1e3:.3f} ms/image")
        # is the game still on? D's accuracy per level on real and generated pairs (ddgan.diagnostics)
        entry["discriminator_by_level"] = discriminator_report(work / f"fmnist_T{T}", n=512 if "cuda" in str(args.device) else 128,
                                                               device=args.device)
        log("  D accuracy by level: " + ", ".join(f"t={r['t']} {r['accuracy']:.2f}"
                                                  for r in entry["discriminator_by_level"]))
        yield entry


def part_diffusion(args, classifier) -> Iterator[dict]:
    """The reference CFG model at w = 0 (no guidance: one network evaluation per DDIM step) at each
    NFE, classes in equal shares so the sample set has the data's class balance."""
    from guidediff.metrics.evaluate import evaluate_samples

    if classifier is None:
        log("  diffusion: skipped (no evaluation classifier; pass --classifier PATH)")
        return
    if args.cfg_model is None:
        log("  diffusion: skipped (pass --cfg-model PATH or a shipped name such as fmnist-cfg)")
        return
    from guidediff.loading import load_model
    from guidediff.generation import generate as cfg_generate

    try:
        net, cfg_config = load_model(args.cfg_model, args.device)
    except UsageError as exc:
        log(f"  diffusion: skipped ({exc})")
        return
    num_classes = cfg_config.model.num_classes
    classes = list(range(num_classes)) if num_classes else [-1]
    per_class = -(-args.n_eval // len(classes))
    for spec in args.diffusion_samplers:
        sampler, grid, sigma_max, name = common.parse_sampler_config(spec)
        for nfe in args.nfe:
            kwargs = dict(sampler=sampler, grid=grid, sigma_max=sigma_max, steps=nfe, device=args.device,
                          batch_size=args.sample_batch, progress=False)
            cfg_generate(net, cfg_config, classes[:1], [0.0], min(per_class, args.sample_batch), seed=123, **kwargs)
            res = cfg_generate(net, cfg_config, classes, [0.0], per_class, seed=0, **kwargs)
            metrics = evaluate_samples(res["x"], None, classifier, device=args.device, data_dir=args.data_dir)
            method = "diffusion-ddim" if name == "ddim-u" else f"diffusion-{name}"
            entry = {"method": method, "w": 0.0, "nfe": int(round(res["nfe_per_image"])), "steps": nfe,
                     "fid": metrics["fid"], "fid_floor": metrics["fid_floor"], "precision": metrics["precision"],
                     "recall": metrics["recall"], "n": metrics["n"], "sec_per_image": res["seconds"] / len(res["x"]),
                     "model": str(args.cfg_model)}
            log(f"  diffusion {name} {nfe} steps ({entry['nfe']} NFE): FID-FMNIST {entry['fid']:.2f}, "
                f"recall {entry['recall']:.3f}, {entry['sec_per_image'] * 1e3:.3f} ms/image")
            yield entry


def _grid(path: Path, x: np.ndarray, k: int = 64) -> None:
    from guidediff.images import save_grid

    save_grid(path, x[:k], 8, 8)


# -- results -----------------------------------------------------------------------------------------

def row_key(entry: dict) -> str:
    """An fmnist row's name among the parts of ddgan.json, as planned_keys names it: a diffusion row
    by its sampler steps (--nfe), which a second-order sampler's network evaluations exceed."""
    if entry["method"] == "ddgan":
        return f"fmnist ddgan T={entry['nfe']}"
    return f"fmnist {entry['method']} nfe={entry.get('steps', entry['nfe'])}"


def parts_of(result: dict) -> dict[str, dict]:
    """Every part of a ddgan.json by its name: gaussians25, stacked and one per fmnist row."""
    parts = {k: result[k] for k in ("gaussians25", "stacked") if isinstance(result.get(k), dict)}
    parts.update({row_key(e): e for e in result.get("fmnist", [])})
    return parts


def settings_by_part(result: dict) -> dict[str, dict]:
    """The settings of the call that made each part. An older file kept only its last call's
    settings: they belong to the parts that call planned."""
    if "settings_by_part" in result:
        return dict(result["settings_by_part"])
    settings = result.get("settings")
    if not settings:
        return {}
    defaults = {"parts": [], "fmnist_T": [], "nfe": [], "diffusion_samplers": ["ddim-u"]}
    planned = planned_keys(argparse.Namespace(**{**defaults, **settings}))
    return {key: settings for key in planned if key in parts_of(result)}


def merge(old: dict, new: dict) -> dict:
    """new over old: fmnist rows are replaced per row_key, kept otherwise. Each part keeps the
    settings of the call that made it; the prose provenance of a replaced part goes."""
    file_keys = ("fmnist", "settings", "settings_by_part", "provenance", "device", "torch", "commit", "cuda")
    merged = {**old, **{k: v for k, v in new.items() if k not in file_keys}}
    merged.pop("settings", None)
    entries = {row_key(e): e for e in old.get("fmnist", [])}
    entries.update({row_key(e): e for e in new.get("fmnist", [])})
    if entries:
        merged["fmnist"] = sorted(entries.values(), key=lambda e: (e["method"], e["nfe"]))
    merged["settings_by_part"] = {**settings_by_part(old), **settings_by_part(new)}
    replaced = {k for k in ("gaussians25", "stacked") if k in new} | ({"fmnist"} if new.get("fmnist") else set())
    provenance = {**{k: v for k, v in old.get("provenance", {}).items() if k not in replaced},
                  **new.get("provenance", {})}
    merged.pop("provenance", None)
    if provenance:
        merged["provenance"] = provenance
    return merged


MIXED = "mixed: each part's measured_on (or, for older parts, measured / provenance) says where"


def file_stamp(result: dict) -> dict:
    """The file's device, torch and commit from its parts' measured_on (an older part has none: MIXED)."""
    return common.stamp_from_parts([p.get("measured_on") for p in parts_of(result).values()], MIXED)


def read_input(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: --merge {path} is not a readable ddgan.json ({exc.__class__.__name__}); pass the "
                         "ddgan.json files of earlier calls") from None
    if not isinstance(data, dict) or not {"gaussians25", "stacked", "fmnist"} & set(data):
        raise SystemExit(f"error: --merge {path} holds no ddgan part (gaussians25, stacked, fmnist)")
    return data


def check_arguments(args) -> None:
    """Every number and sampler name before any training: a bad one otherwise surfaces only after
    the earlier parts have trained."""
    for name in ("n_eval", "n_toy", "n_stacked", "batch_size", "sample_batch", "steps", "toy_steps", "stacked_steps",
                 "stacked_T"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("fmnist_T", "toy_T", "nfe"):
        if min(getattr(args, name)) < 1:
            raise SystemExit(f"error: every --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("minutes", "toy_minutes", "stacked_minutes"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {value}")
    for spec in args.diffusion_samplers:
        common.parse_sampler_config(spec)


def planned_keys(args) -> list[str]:
    """The entries of ddgan.json this run would write."""
    keys = [k for k in ("gaussians25", "stacked") if k in args.parts]
    if "fmnist" in args.parts:
        keys += [f"fmnist ddgan T={T}" for T in args.fmnist_T]
    if "diffusion" in args.parts:
        names = [common.parse_sampler_config(spec)[3] for spec in args.diffusion_samplers]
        keys += [f"fmnist {'diffusion-ddim' if n == 'ddim-u' else f'diffusion-{n}'} nfe={nfe}"
                 for n in names for nfe in args.nfe]
    return keys


def run_dirs(key: str, args, work: Path) -> list[Path]:
    """The run directories whose training a part of ddgan.json reports (none for a diffusion row,
    which trains nothing)."""
    if key == "gaussians25":
        return [work / f"grid25_T{T}" for T in args.toy_T]
    if key == "stacked":
        return [work / "stacked"]
    if key.startswith("fmnist ddgan T="):
        return [work / f"fmnist_T{key.rpartition('=')[2]}"]
    return []


def refuse_replacing(old: dict, args, target: Path, device: str) -> None:
    """A part already in ddgan.json is replaced only by a run that continues its training on the
    same device (--resume, with a checkpoint of every run it reports in --work-dir) or when told
    (BENCH_OVERWRITE=1)."""
    from guidediff.checkpoint import latest_checkpoint

    if os.environ.get("BENCH_OVERWRITE") == "1":
        return
    have = parts_of(old)

    def continued(key: str) -> bool:
        dirs = run_dirs(key, args, Path(args.work_dir))
        measured = (have[key].get("measured_on") or {}).get("device")
        return (args.resume and bool(dirs) and measured == device
                and all(latest_checkpoint(d / "checkpoints") is not None for d in dirs))

    clash = [k for k in planned_keys(args) if k in have and not continued(k)]
    if clash:
        raise SystemExit(f"error: {target} already holds {', '.join(clash)}, which this run would not continue (--resume "
                         "continues a part measured on this device whose runs are in --work-dir); write elsewhere with "
                         "--out, or set BENCH_OVERWRITE=1 to replace them")


def refuse_merging_over(old: dict, inputs: list[dict], target: Path) -> None:
    """--merge adds parts; one already in ddgan.json is replaced only when told (BENCH_OVERWRITE=1)."""
    if os.environ.get("BENCH_OVERWRITE") == "1":
        return
    clash = [k for new in inputs for k in parts_of(new) if k in parts_of(old)]
    if clash:
        raise SystemExit(f"error: {target} already holds {', '.join(dict.fromkeys(clash))}; merge into another --out, "
                         "or set BENCH_OVERWRITE=1 to replace them with the merged files' parts")


def part_figures(result: dict) -> list[str]:
    """The figures benchmarks/ddgan.py writes beside ddgan.json for the parts of ``result``."""
    names = [f"ddgan_{k}.png" for k in ("gaussians25", "stacked") if k in result]
    return names + [f"ddgan_fmnist_T{e['nfe']}.png" for e in result.get("fmnist", []) if e["method"] == "ddgan"]


def print_table(result: dict) -> None:
    if "gaussians25" in result:
        g = result["gaussians25"]
        for run in g.get("runs", [g]):
            log(f"25-Gaussians  DDGAN T={run['T']}: {run['modes']}/25 modes, {run['high_quality_share']:.1%} HQ | "
                + " | ".join(f"{b['method']} {b['nfe']} NFE: {b['modes']}/25, {b['high_quality_share']:.1%} HQ"
                             for b in run["baselines"]))
    if "stacked" in result:
        s = result["stacked"]
        log(f"stacked FMNIST  modes {s['modes']}/1000  KL {s['kl']:.3f}  n={s['n']}")
    if result.get("fmnist"):
        log(f"{'method':<30}{'NFE':>5}{'FID':>9}{'floor':>8}{'recall':>8}{'ms/img':>9}")
        for e in result["fmnist"]:
            log(f"{e['method']:<30}{e['nfe']:>5}{e['fid']:>9.2f}{e['fid_floor']:>8.2f}{e['recall']:>8.3f}"
                f"{e['sec_per_image'] * 1e3:>9.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None,
                   help="folder of ddgan.json and figures (default $BENCH_OUT or benchmarks/results)")
    p.add_argument("--work-dir", default="/tmp/ddgan_bench", help="run directories (checkpoints) go here")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs found in --work-dir (each part trains its minutes more, up to its steps "
                        "in all), then evaluate; a run not found there starts fresh")
    p.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST .gz files (default: the usual search)")
    p.add_argument("--classifier", default=None, help="evaluation classifier weights (default: the shipped one)")
    p.add_argument("--cfg-model", default=None, help="reference CFG model (run dir, .safetensors or shipped name)")
    p.add_argument("--fmnist-T", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--minutes", type=float, default=3.5, help="training minutes per fmnist T")
    p.add_argument("--steps", type=int, default=1_000_000, help="training step cap per fmnist T")
    p.add_argument("--batch-size", type=int, default=256, help="image batch size (fmnist and stacked)")
    p.add_argument("--set", action="append", default=[], help="extra DDGAN config override for image runs")
    p.add_argument("--n-eval", type=int, default=10_000, help="samples per FID evaluation")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 10, 50], help="steps of the diffusion baseline")
    p.add_argument("--diffusion-samplers", nargs="+", default=["ddim-u"], metavar="SAMPLER-GRID[@S]",
                   help="samplers of the diffusion baseline, e.g. ddim-u unipc-karras@80 (w = 0: one network "
                        "evaluation per step, except Heun's two)")
    p.add_argument("--sample-batch", type=int, default=1000)
    p.add_argument("--toy-T", type=int, nargs="+", default=[2, 4])
    p.add_argument("--toy-steps", type=int, default=100_000, help="step cap per toy T (minutes usually stop first)")
    p.add_argument("--toy-minutes", type=float, default=1.0, help="training minutes per toy T")
    p.add_argument("--n-toy", type=int, default=10_000)
    p.add_argument("--toy-diffusion-steps", type=int, default=3000,
                   help="train steps of the 2-D MLP diffusion baseline (0: exact-score baseline only)")
    p.add_argument("--stacked-T", type=int, default=4)
    p.add_argument("--stacked-minutes", type=float, default=4.0)
    p.add_argument("--stacked-steps", type=int, default=1_000_000)
    p.add_argument("--n-stacked", type=int, default=26_000)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: a few steps, tiny nets, few samples")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="only merge these result files into <out>")
    args = p.parse_args(argv)
    if args.tiny:  # the smoke run's sizes, except where the command line gave its own
        p.set_defaults(**TINY_SIZES)
        args = p.parse_args(argv)

    if args.tiny and not (args.out or os.environ.get("BENCH_OUT")):  # a smoke run never lands in benchmarks/results
        args.out = tempfile.mkdtemp(prefix="ddgan_tiny_")
    check_arguments(args)
    device = common.device_name(args.device)
    inputs = [read_input(path) for path in args.merge or []]
    # ddgan.json collects its parts over several calls, each part stamped with where it was measured
    # (measured_on), so the file as a whole is continued; what a run would replace is checked per part
    target = common.claim_result("ddgan", args.out, resume=True, parts_say_where=True)
    out = target.parent
    old = json.loads(target.read_text()) if target.is_file() else {}
    if args.merge:
        refuse_merging_over(old, inputs, target)
        for path, new in zip(args.merge, inputs):
            old = merge(old, new)
            for name in part_figures(new):  # each part's figure travels with it
                figure = Path(path).parent / name
                if figure.is_file() and figure.parent.resolve() != out.resolve():
                    shutil.copyfile(figure, out / name)
        old.update(file_stamp(old))
        common.write_result("ddgan", old, str(out))
        print_table(old)
        return 0
    refuse_replacing(old, args, target, device)

    classifier = None
    if {"stacked", "fmnist", "diffusion"} & set(args.parts):
        from guidediff.nets.fmnist_classifier import load_eval_classifier

        try:
            classifier = load_eval_classifier(args.classifier, args.device)
        except UsageError as exc:
            log(f"no evaluation classifier ({exc}); the stacked and fmnist parts will be skipped")
    work = Path(args.work_dir)
    start = time.perf_counter()
    results = {k: v for k, v in old.items() if k not in ("torch", "commit", "cuda")}
    settings = {k: v for k, v in vars(args).items() if k != "merge"}

    env = {**common.environment(), "device": device}
    # who else was on the GPU when each part began and ended: a part's wall times and its
    # steps-in-minutes are comparable to another's only when both had the GPU to themselves
    began = common.sharing_began(args.device)

    def save(new: dict) -> None:
        # after every part, so a call cut off by its time limit still returns what it finished
        nonlocal results, began
        settings["wall_seconds"] = round(time.perf_counter() - start, 1)
        measured_on = {k: env[k] for k in ("device", "torch", "commit")}
        sharing = common.sharing_record(began, args.device)
        if sharing:
            measured_on["gpu_sharing"] = sharing
            began = sharing["ended"]
        stamped = {k: [{**e, "measured_on": measured_on} for e in v] if k == "fmnist" else {**v, "measured_on": measured_on}
                   for k, v in new.items()}
        results = merge(results, {**stamped, "settings_by_part": {key: dict(settings) for key in parts_of(stamped)}})
        results.update(file_stamp(results))
        common.write_result("ddgan", results, str(out))

    if "gaussians25" in args.parts:
        log("== 25-Gaussians")
        save({"gaussians25": part_gaussians25(args, work, out)})
    if "stacked" in args.parts:
        log("== stacked Fashion-MNIST")
        stacked = part_stacked(args, work, out, classifier)
        if stacked is not None:
            save({"stacked": stacked})
    if "fmnist" in args.parts:
        log("== Fashion-MNIST, DDGAN")
        for entry in part_fmnist(args, work, out, classifier):
            save({"fmnist": [entry]})
    if "diffusion" in args.parts:
        log("== Fashion-MNIST, diffusion baseline")
        for entry in part_diffusion(args, classifier):
            save({"fmnist": [entry]})
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
