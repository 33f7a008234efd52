"""Time to quality on Fashion-MNIST (issue 15): FID-FMNIST and CAS against training minutes for
our new recipe (configs/fmnist_cfg.toml), our old one (configs/fmnist_cfg_v1.toml) and diffusers'
default CFG recipe (benchmarks/quality_vs_diffusers.py). One side per process; each saves EMA
snapshots at the --eval-at minutes while it trains, then samples and scores every snapshot:

    PYTHONPATH=src python3 benchmarks/time_to_quality.py --side new --minutes 5.5 --out $OUT/ttq
    PYTHONPATH=src python3 benchmarks/time_to_quality.py --merge $OUT/ttq \\
        --layout "each side alone on its own H200 of a 2-GPU machine, at the same time"

The clock of our sides starts after the first logged steps (torch.compile happens in the first
step; its seconds are reported as startup_s); diffusers' side does not compile. --merge writes
benchmarks/results/time_to_quality.{json,png} and quality_vs_diffusers.json (the final point of
'new' against diffusers, in that file's keys), with the layout recorded as given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fmnist_eval  # noqa: E402

from guidediff.checkpoint import save_model  # noqa: E402
from guidediff.loading import load_model  # noqa: E402
from guidediff.runtime import resolve_device  # noqa: E402
from guidediff.config import load_config  # noqa: E402
from guidediff.nets.unet import count_parameters  # noqa: E402
from guidediff.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"new": "configs/fmnist_cfg.toml", "old": "configs/fmnist_cfg_v1.toml"}
CHECK_EVERY = 10  # steps between clock checks (the snapshot lands at most this many steps late)


class _Done(Exception):
    """Raised from the training hook once the last snapshot is saved: ends the run on time."""


class Snapshots:
    """The training hook: saves the EMA weights when the clock passes each eval minute."""

    def __init__(self, minutes: list[float], folder: Path, config, record: dict, save):
        self.pending, self.folder, self.config, self.record, self.save = sorted(minutes), folder, config, record, save
        self.t_call, self.t0 = time.perf_counter(), None

    def __call__(self, ema_model, step: int, _out_dir) -> None:
        now = time.perf_counter()
        if self.t0 is None:  # the first steps (compilation) are before the clock
            self.t0, self.record["startup_s"], self.record["steps_before_clock"] = now, now - self.t_call, step
            return
        if now - self.t0 < self.pending[0] * 60:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        clock = time.perf_counter() - self.t0
        while self.pending and clock >= self.pending[0] * 60:
            minute = self.pending.pop(0)
            path = self.folder / f"ema_{minute:g}min.safetensors"
            save_model(ema_model.state_dict(), self.config, path, dtype="float32", step=step, clock_s=clock)
            self.record["snapshots"].append({"minute": minute, "clock_s": clock, "step": step, "model": str(path),
                                             "points": []})
            self.save()
            print(f"snapshot at {clock / 60:.2f} min, step {step}", flush=True)
        if not self.pending:
            raise _Done


def train_ours(side: str, args, record: dict, save) -> None:
    run = Path(args.out) / f"run_{side}"
    config = load_config(ROOT / CONFIGS[side], [f"train.sample_every={CHECK_EVERY}", "train.checkpoint_every=100000000",
                                                "train.tensorboard=false", *args.set])
    record["config"] = config.to_dict()
    hook = Snapshots(args.eval_at, run, config, record, save)
    try:
        result = train(config, run / "train", sample_fn=hook, progress=False)
        # ran out of steps before the last eval minute: the final EMA stands for the rest
        record["ended_by"] = f"train.steps = {result.step} before {hook.pending[0]} min"
        net, _ = load_model(run / "train", "cpu")
        for minute in list(hook.pending):
            path = run / f"ema_{minute:g}min.safetensors"
            save_model(net.state_dict(), config, path, dtype="float32", step=result.step)
            record["snapshots"].append({"minute": minute, "clock_s": None, "step": result.step, "model": str(path),
                                        "points": []})
    except _Done:
        record["ended_by"] = "the clock"
    record["params"] = count_parameters(load_model(record["snapshots"][-1]["model"], "cpu")[0])


def train_diffusers(args, record: dict, save) -> None:
    import quality_vs_diffusers as qvd

    run = Path(args.out) / "run_diffusers"
    pending = sorted(args.eval_at)

    def on_step(step, seconds, unet, ema) -> None:
        while pending and seconds >= pending[0] * 60:
            minute = pending.pop(0)
            folder = run / f"ema_{minute:g}min"
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
            unet.save_pretrained(folder / "unet")
            ema.restore(unet.parameters())
            qvd.ddim_scheduler().save_pretrained(folder / "scheduler")
            record["snapshots"].append({"minute": minute, "clock_s": seconds, "step": step, "model": str(folder),
                                        "points": []})
            save()
            print(f"snapshot at {seconds / 60:.2f} min, step {step}", flush=True)

    unet, steps, minutes, info = qvd.diffusers_train(max(args.eval_at) + 1 / 60, args.device, args.params, on_step)
    record.update(info)
    record["startup_s"], record["ended_by"] = 0.0, "the clock"


def evaluate(side: str, args, record: dict, save) -> None:
    last = max(s["minute"] for s in record["snapshots"])
    for snap in record["snapshots"]:
        # the final snapshot is the equal-minutes comparison; earlier ones only draw the curve
        final = snap["minute"] == last
        per_class = max((args.n if final or args.early_n is None else args.early_n) // 10, 1)
        ws = args.w if final or args.early_w is None else args.early_w
        snap["n_per_w"] = 10 * per_class
        print(f"{side} at {snap['minute']:g} min:", flush=True)
        if side == "diffusers":
            import quality_vs_diffusers as qvd
            from diffusers import DDIMScheduler, UNet2DModel

            unet = UNet2DModel.from_pretrained(Path(snap["model"]) / "unet").to(args.device).eval()
            ddim = DDIMScheduler.from_pretrained(Path(snap["model"]) / "scheduler")
            ddim.set_timesteps(args.ddim_steps)
            snap["points"] = qvd.diffusers_points(unet, ddim, ws, per_class, args.device)
            save()
            continue
        net, config = load_model(snap["model"], args.device)

        def on_point(point: dict, snap=snap) -> None:
            snap["points"].append(point)
            save()

        fmnist_eval.evaluate_at(net, config, ws, per_class, ddim_steps=args.ddim_steps, device=args.device,
                                on_point=on_point)


def run_side(args) -> None:
    # before any training: an earlier side result is replaced only when told
    path = common.claim_result(f"time_to_quality_{args.side}", args.out)
    record = {**common.environment(), "side": args.side, "minutes": max(args.eval_at), "eval_at": args.eval_at,
              "task": {"n_per_w": 10 * max(args.n // 10, 1), "ddim_steps": args.ddim_steps, "w": args.w},
              "config_file": CONFIGS.get(args.side, "diffusers default (benchmarks/quality_vs_diffusers.py)"),
              "extra_overrides": list(args.set), "snapshots": [], "status": "training"}

    def save() -> None:
        fmnist_eval.write_json(path, record)

    save()
    began = common.sharing_began(args.device)
    if args.side == "diffusers":
        train_diffusers(args, record, save)
    else:
        train_ours(args.side, args, record, save)
    # the minutes compared are the training's: who else was on the GPU when it began and ended
    record["gpu_sharing_training"] = common.sharing_record(began, args.device)
    record["status"] = "evaluating"
    save()
    evaluate(args.side, args, record, save)
    record["status"] = "done"
    save()
    print(f"wrote {path}", flush=True)


def merge(args) -> None:
    folder = Path(args.merge)
    sides = {}
    for side in ("new", "old", "diffusers"):
        path = folder / f"time_to_quality_{side}.json"
        if path.is_file():
            sides[side] = json.loads(path.read_text())
    if not sides:
        raise SystemExit(f"no time_to_quality_<side>.json in {folder}; pass the --out folder of the sides")
    first = next(iter(sides.values()))
    ours = None
    if "new" in sides:  # read (and checked) before anything is written
        ours = {**final_snapshot(sides["new"]), "params": sides["new"].get("params"), "config": CONFIGS["new"]}
        if args.ours_final:
            ours = ours_from_model_check(args.ours_final, ours)
    compared = ours is not None and "diffusers" in sides
    # every output this merge writes, checked before the first is written; an earlier result is
    # replaced only when told
    results = common.claim_result("time_to_quality", args.results, device=first.get("device")).parent
    if compared:
        common.claim_result("quality_vs_diffusers", args.results, device=first.get("device"))
    # the sides' own device, torch and commit win over the merging machine's
    env = {k: first[k] for k in ("device", "torch", "commit", "cuda") if k in first}
    payload = {**env, "task": first["task"], "layout": args.layout, "sides": sides,
               "note": "each side trained for the wall-clock minutes given; our sides' clock excludes the "
                       "startup (data loading, torch.compile) reported as startup_s"}
    common.write_result("time_to_quality", payload, out_dir=str(results))
    plot(sides, results / "time_to_quality.png", ours if args.ours_final else None)
    if compared:
        import quality_vs_diffusers as qvd

        theirs = {**final_snapshot(sides["diffusers"]),
                  **{k: sides["diffusers"][k] for k in ("block_out_channels", "params") if k in sides["diffusers"]}}
        result = qvd.compare({**env, "task": {"minutes": sides["new"]["minutes"], **first["task"]}, "sides_run": args.layout,
                              "source": "benchmarks/time_to_quality.py (final snapshots)", "ours": ours,
                              "diffusers": theirs})
        common.write_result("quality_vs_diffusers", result, out_dir=str(results))


def final_snapshot(rec: dict) -> dict:
    """A side's last snapshot as the equal-minutes comparison reads it."""
    snap = rec["snapshots"][-1]
    return {"steps": snap["step"], "train_minutes": (snap["clock_s"] or 0) / 60, "points": snap["points"]}


def ours_from_model_check(spec: str, ours: dict) -> dict:
    """Our equal-minutes side from a model_check.py JSON (``FILE`` or ``FILE:MODEL``) of the new
    recipe trained for the full minutes (the shipped model), instead of the 'new' side's last
    snapshot, when that run stopped at a shorter train.steps."""
    path, _, name = spec.partition(":")
    try:
        record = json.loads(Path(path).read_text())
        models = record["models"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"error: --ours-final {path} is not a model_check.py result ({exc.__class__.__name__}); "
                         "pass its JSON, or FILE:MODEL") from None
    name = name or next(iter(models))
    if name not in models:
        raise SystemExit(f"error: --ours-final {path} holds no model {name!r}; it holds {', '.join(models)}")
    # the model's steps and training time as model_check recorded them when it scored it
    info = record.get("provenance", {}).get(name)
    if not info:  # missing, or an empty record (a checkpoint directory model_check could not read)
        raise SystemExit(f"{path} records no provenance for {name} (step, training time); re-run "
                         "benchmarks/model_check.py, which records it")
    return {**ours, "points": models[name], "model": name, "points_source": f"{path} (commit {record.get('commit')})",
            "steps": info.get("step", ours["steps"]),
            "train_minutes": info["training_time_s"] / 60 if "training_time_s" in info else ours["train_minutes"],
            "trained_at_commit": info.get("commit")}


def plot(sides: dict, out: Path, ours_final: dict | None = None) -> None:
    """FID against training minutes per side and w; ``ours_final`` (the --ours-final model, trained
    past the 'new' side's last step) is drawn as one more marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = next(iter(sides.values()))["task"]["w"]
    fig, axes = plt.subplots(1, len(ws), figsize=(4 * len(ws), 3.4), squeeze=False)
    for ax, w in zip(axes[0], ws):
        for side, rec in sides.items():
            pts = [(s["minute"], p["fid"]) for s in rec["snapshots"] for p in s["points"] if p["w"] == w]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=side)
        final = [p["fid"] for p in (ours_final or {}).get("points", []) if p["w"] == w]
        if final:
            ax.plot([ours_final["train_minutes"]], final, marker="*", markersize=12, ls="none", color="C0",
                    label=f"new, {ours_final['steps']} steps ({ours_final.get('model', 'final')})")
        ax.set_xlabel("training minutes")
        ax.set_ylabel("FID-FMNIST")
        ax.set_yscale("log")
        ax.set_title(f"w = {w:g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["new", "old", "diffusers"])
    parser.add_argument("--minutes", type=float, default=5.5, help="training wall-clock minutes")
    parser.add_argument("--eval-at", default="1,2,3.5,5.5", help="minutes at which to snapshot the EMA (<= --minutes)")
    parser.add_argument("--n", type=int, default=5000, help="samples per w (split over the 10 classes)")
    parser.add_argument("--w", default="0,1,3")
    parser.add_argument("--early-n", type=int, default=None,
                        help="samples per w for the snapshots before the last (default: --n)")
    parser.add_argument("--early-w", default=None, help="weights for the snapshots before the last (default: --w)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--out", default="runs/time_to_quality")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (ours)")
    parser.add_argument("--params", type=int, default=7_992_961, help="diffusers: parameter count to match")
    parser.add_argument("--merge", metavar="DIR", help="only join DIR's side files")
    parser.add_argument("--layout", help="with --merge: how the sides ran (recorded as given; say it truthfully)")
    parser.add_argument("--results", default=None,
                        help="where --merge writes (default $BENCH_OUT, else benchmarks/results)")
    parser.add_argument("--ours-final", metavar="JSON[:MODEL]",
                        help="with --merge: our equal-minutes points from this model_check.py result (the new recipe "
                             "trained for the full minutes) instead of the 'new' side's last snapshot")
    args = parser.parse_args()
    if args.merge:
        if not args.layout:
            parser.error("--merge needs --layout: how the sides shared (or did not share) the GPUs")
        merge(args)
        return
    if args.side is None:
        parser.error("pass --side new|old|diffusers, or --merge DIR --layout TEXT")
    args.w = [float(v) for v in args.w.split(",")]
    args.early_w = [float(v) for v in args.early_w.split(",")] if args.early_w else None
    args.eval_at = sorted({min(float(v), args.minutes) for v in args.eval_at.split(",")} | {args.minutes})
    args.device = str(resolve_device(None))
    run_side(args)


if __name__ == "__main__":
    main()
