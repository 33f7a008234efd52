"""Recipe ablation on Fashion-MNIST (issue 15): each lever alone against today's recipe
(configs/fmnist_cfg_v1.toml), trained for the same number of steps, then FID-FMNIST and CAS at
w = 0, 0.3, 1, 3 (DDIM 50, n samples per w).

One variant per process, so K variants can share one GPU as K concurrent processes; each writes
DIR/<variant>_s<seed>.json after training and again after every w:

    for v in baseline edm min_snr5 warmup200_cosine beta2_099 ema_power005 p_uncond02 new; do
      PYTHONPATH=src python3 benchmarks/recipe_ablation.py --variant $v --steps 2000 --out $OUT/abl \\
        --sharing "8 variants as 8 concurrent processes on one H200" & done; wait
    PYTHONPATH=src python3 benchmarks/recipe_ablation.py --merge $OUT/abl   # -> results/recipe_ablation.{json,md}

The merge writes into --results (default $BENCH_OUT, else benchmarks/results); an earlier
recipe_ablation.json there is refused before the merge unless BENCH_OVERWRITE=1.

``--list`` prints the variants. The step count is fixed, not the time: concurrent processes slow
each other down, but every variant still sees the same number of images (batch256 sees twice as
many; the table says so).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fmnist_eval  # noqa: E402

from guidediff.loading import load_model  # noqa: E402
from guidediff.runtime import resolve_device  # noqa: E402
from guidediff.config import load_config  # noqa: E402
from guidediff.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = "configs/fmnist_cfg_v1.toml"

# name: (overrides on top of the base config, what it tests, base config). In priority order: the
# first eight are the ones to run when only eight processes fit.
VARIANTS: dict[str, tuple[list[str], str, str]] = {
    "baseline": ([], "the previous recipe (configs/fmnist_cfg_v1.toml)", BASE),
    "edm": (['diffusion.precondition="edm"', 'diffusion.loss_weight="edm"', 'diffusion.lam_sampling="lognormal"'],
            "EDM preconditioning + EDM loss weight + log-normal noise levels (P_mean -1.2, P_std 1.2)", BASE),
    "min_snr5": (['diffusion.loss_weight="min_snr"', "diffusion.min_snr_gamma=5.0"], "min-SNR-5 weighting", BASE),
    "warmup200_cosine": (["train.warmup_steps=200", 'train.lr_schedule="cosine"', "train.lr_final=0.1"],
                         "200 warm-up steps, cosine decay to 0.1 lr at the last step", BASE),
    "beta2_099": (["train.adam_beta2=0.99"], "Adam beta2 0.99 (today 0.999)", BASE),
    "ema_power005": (['train.ema="power"', "train.ema_sigma_rel=0.05"],
                     "EDM2 power-function EMA, sigma_rel 0.05 (today's warm-up EMA spans ~n/9 steps)", BASE),
    "p_uncond02": (["diffusion.p_uncond=0.2"], "label dropout 0.2 (today 0.1)", BASE),
    "new": ([], "the candidate recipe, now configs/fmnist_cfg.toml (all levers above but min-SNR and EMA)",
            "configs/fmnist_cfg.toml"),
    "v_weight": (['diffusion.loss_weight="v"'], "v-prediction loss weight (1 + e^-lambda on the eps error)", BASE),
    "lam15": (["diffusion.lam_min=-15.0", "diffusion.lam_max=15.0"], "lambda range [-15, 15] (today [-20, 20])",
              BASE),
    "shift2": (["diffusion.schedule_shift=2.0"], "shifted cosine, lambda + 2 log 2 (simple diffusion; 64/28 = 2.3)",
               BASE),
    "edm_sd07": (['diffusion.precondition="edm"', 'diffusion.loss_weight="edm"', 'diffusion.lam_sampling="lognormal"',
                  "diffusion.sigma_data=0.7"], "as edm with sigma_data 0.7 (Fashion-MNIST's pixel std in [-1, 1])",
                 BASE),
    "batch256": (["train.batch_size=256", "train.lr=2.83e-4"],
                 "batch 256, lr x sqrt(2) (sees twice the images at equal steps)", BASE),
}


def run_variant(args) -> None:
    overrides, what, base = VARIANTS[args.variant]
    out = Path(args.out)
    name = f"{args.variant}_s{args.seed}"
    run_dir = Path(args.runs or out / "runs") / name
    # before any work: a finished variant is replaced only when told; one whose run was cut off
    # (a checkpoint, its JSON not "done") continues
    from guidediff.checkpoint import latest_checkpoint

    earlier = out / f"{name}.json"
    cut_off = (latest_checkpoint(run_dir / "checkpoints") is not None and earlier.is_file()
               and json.loads(earlier.read_text()).get("status") != "done")
    path = common.claim_result(name, str(out), resume=cut_off)
    if not cut_off and latest_checkpoint(run_dir / "checkpoints") is not None:
        raise SystemExit(f"error: {run_dir} holds a finished run of {name}; remove it, or pass --runs DIR, to train "
                         "the variant again")
    device = str(resolve_device(None))
    config = load_config(ROOT / base, [*overrides, *args.set, f"train.steps={args.steps}", f"train.seed={args.seed}",
                                       "train.sample_every=100000000", f"train.checkpoint_every={args.steps}",
                                       "train.keep_last=1", "train.tensorboard=false"])
    record = {**common.environment(), "variant": args.variant, "what": what, "base_config": base,
              "overrides": overrides, "extra_overrides": list(args.set), "steps": args.steps, "seed": args.seed,
              "batch_size": config.train.batch_size, "gpu_sharing": args.sharing,
              "task": {"n_per_w": 10 * max(args.n // 10, 1), "ddim_steps": args.ddim_steps, "w": args.w},
              "status": "training", "points": []}
    fmnist_eval.write_json(path, record)
    t0 = time.time()
    result = train(config, run_dir, resume=cut_off, progress=False)
    record["train"] = {"resumed_cut_off_run": cut_off, "wall_s": time.time() - t0, "loop_s": result.loop_s, "final_loss": result.final_loss,
                       "steps_per_s": (result.images / config.train.batch_size) / max(result.loop_s, 1e-9),
                       "steps_done": result.step}
    record["status"] = "evaluating"
    fmnist_eval.write_json(path, record)
    print(f"{name}: trained {result.step} steps in {record['train']['wall_s']:.0f} s", flush=True)
    net, saved = load_model(run_dir, device)

    def on_point(point: dict) -> None:
        record["points"].append(point)
        fmnist_eval.write_json(path, record)

    fmnist_eval.evaluate_at(net, saved, args.w, max(args.n // 10, 1), ddim_steps=args.ddim_steps, device=device,
                            seed=args.seed, on_point=on_point)
    record["status"] = "done"
    record["wall_s"] = time.time() - t0
    fmnist_eval.write_json(path, record)
    print(f"wrote {path}", flush=True)


def merge(directory: Path, results: str | None = None) -> dict:
    records = [json.loads(p.read_text()) for p in sorted(directory.glob("*_s*.json"))]
    if not records:
        raise SystemExit(f"no <variant>_s<seed>.json files in {directory}; pass the --out folder of the runs")
    # before anything is written, checked against the device the variants were measured on: the
    # merge rebuilds the whole file, so an earlier result is replaced only when told
    results = common.claim_result("recipe_ablation", results, device=records[0].get("device")).parent
    base = {r["seed"]: r for r in records if r["variant"] == "baseline"}
    rows = []
    for r in sorted(records, key=lambda r: (list(VARIANTS).index(r["variant"]) if r["variant"] in VARIANTS else 99,
                                             r["seed"])):
        ref = {p["w"]: p["fid"] for p in base.get(r["seed"], {}).get("points", [])}
        rows.append({k: r.get(k) for k in ("variant", "what", "base_config", "overrides", "extra_overrides", "steps",
                                           "seed", "batch_size", "status", "train", "points", "commit")}
                    | {"fid_ratio_vs_baseline": {str(p["w"]): p["fid"] / ref[p["w"]] for p in r["points"]
                                                 if p["w"] in ref}})
    sharing = sorted({r.get("gpu_sharing") for r in records})
    payload = {"task": records[0]["task"], "device": records[0]["device"], "torch": records[0]["torch"],
               "commit": records[0]["commit"], "fixed": "steps",
               "gpu_sharing": sharing[0] if len(sharing) == 1 else sharing,
               "note": "every variant trained for the same number of steps (not minutes); the variants shared the "
                       "GPU as described in gpu_sharing, so their wall times are not comparable",
               "variants": rows}
    fmnist_eval.write_json(results / "recipe_ablation.json", payload)
    (results / "recipe_ablation.md").write_text(markdown(payload))
    print(markdown(payload))
    print(f"wrote {results / 'recipe_ablation.json'} and recipe_ablation.md")
    return payload


def markdown(payload: dict) -> str:
    ws = payload["task"]["w"]
    head = (f"# Recipe ablation (FID-FMNIST / CAS, {payload['task']['n_per_w']} samples per w, DDIM "
            f"{payload['task']['ddim_steps']})\n\n{payload['device']}, torch {payload['torch']}, commit "
            f"{payload['commit']}. {payload['note']}; GPU: {payload['gpu_sharing']}.\n\n")
    cols = " | ".join(f"FID w={w:g}" for w in ws) + " | " + " | ".join(f"CAS w={w:g}" for w in ws)
    lines = [f"| variant | seed | steps | {cols} | what |", "|---" * (4 + 2 * len(ws)) + "|"]
    for r in payload["variants"]:
        pts = {p["w"]: p for p in r["points"]}
        fid = " | ".join(f"{pts[w]['fid']:.3f}" if w in pts else "-" for w in ws)
        cas = " | ".join(f"{pts[w]['cas']:.3f}" if w in pts else "-" for w in ws)
        lines.append(f"| {r['variant']} | {r['seed']} | {r['steps']} | {fid} | {cas} | {r['what']} |")
    floor = next((p["fid_floor"] for r in payload["variants"] for p in r["points"]), None)
    tail = f"\nReal-data floor (FID of 10k training images): {floor:.3f}\n" if floor is not None else "\n"
    return head + "\n".join(lines) + "\n" + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(VARIANTS), help="the variant this process trains and evaluates")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (the same for every variant)")
    parser.add_argument("--out", default="runs/recipe_ablation", help="folder of the per-variant JSON files")
    parser.add_argument("--runs", default=None, help="folder of the training runs (default OUT/runs)")
    parser.add_argument("--n", type=int, default=5000, help="samples per w (split over the 10 classes)")
    parser.add_argument("--w", default="0,0.3,1,3", type=lambda s: [float(v) for v in s.split(",")])
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every variant (e.g. a tiny model for a CPU check)")
    parser.add_argument("--sharing", default="one process alone on the GPU",
                        help="how the GPU was shared, recorded in the JSON (say it truthfully)")
    parser.add_argument("--merge", metavar="DIR", help="only join DIR's JSON files into results/recipe_ablation.*")
    parser.add_argument("--results", default=None,
                        help="where --merge writes (default $BENCH_OUT, else benchmarks/results)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args()
    if args.list:
        for name, (overrides, what, base) in VARIANTS.items():
            print(f"{name:18s} {what}  [{base} {' '.join(overrides)}]")
        return
    if args.merge:
        merge(Path(args.merge), args.results)
        return
    if args.variant is None:
        parser.error("pass --variant NAME (see --list), or --merge DIR")
    run_variant(args)


if __name__ == "__main__":
    main()
