"""FID-FMNIST against network evaluations per image for every sampler (and step grid where it matters).

For each configuration (sampler on a grid), each step count and each CFG weight w, samples --n images
(split evenly over the classes, same seeds everywhere) from the model and evaluates them with the
shipped Fashion-MNIST classifier's features (guidediff.metrics.evaluate.evaluate_samples). NFE per
image is counted by generate (a guided step costs 2; Heun pays 2 per step but the last).
Writes benchmarks/results/samplers_fid_vs_nfe.{json,png} (or into --out / $BENCH_OUT) after every
point, so a run cut short keeps what it measured; --resume skips the points already in the JSON
(keyed by config, steps and w; a config's @SIGMA_MAX is part of its name).

    PYTHONPATH=src python3 benchmarks/samplers_fid_vs_nfe.py --compile            # one H200, ~6 min
    PYTHONPATH=src python3 benchmarks/samplers_fid_vs_nfe.py --n 20 --steps 2 --w 0.3 \
        --configs ddim-u,heun-karras,dpmpp-2m-karras@80 --device cpu --out /tmp/bench  # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "samplers_fid_vs_nfe"
# sampler-grid: every sampler on the schedule's own grid; beside it the grids the solvers' papers use
# (uniform λ for DPM-Solver++, EDM's ρ = 7 for Heun). Over our λ ∈ [−20, 20] (σ/α up to e^10, EDM's
# σ_max is 80) those grids spend several steps where x̂ hardly changes, so both are measured.
# A suffix @S starts the grid at σ/α = S (generate's sigma_max), e.g. dpmpp-2m-karras@80
# (common.parse_sampler_config).
DEFAULT_CONFIGS = "ddim-u,dpmpp-2m-u,dpmpp-2m-lambda,heun-u,heun-karras,unipc-u"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = sorted({p["w"] for p in payload["points"]})
    fig, axes = plt.subplots(1, len(ws), figsize=(5.5 * len(ws), 4.2), squeeze=False)
    for ax, w in zip(axes[0], ws):
        for config in dict.fromkeys(p["config"] for p in payload["points"]):  # --resume may add configs
            pts = sorted((p for p in payload["points"] if p["w"] == w and p["config"] == config), key=lambda p: p["nfe_per_image"])
            if pts:
                ax.plot([p["nfe_per_image"] for p in pts], [p["fid"] for p in pts], marker="o", label=config)
        floor = [p["fid_floor"] for p in payload["points"] if p.get("fid_floor") is not None]
        if floor:
            ax.axhline(floor[0], color="gray", ls=":", label="real-data floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations per image (NFE)")
        ax.set_ylabel("FID-FMNIST")
        ax.set_title(f"w = {w:g} (diffusers' scale {1 + w:g})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-cfg", help="checkpoint or shipped model name")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list of SAMPLER-GRID (default {DEFAULT_CONFIGS})")
    p.add_argument("--steps", default="5,10,15,20,25,50", help="comma list of step counts")
    p.add_argument("--w", default="0.3,1", help="comma list of CFG weights")
    p.add_argument("--n", type=int, default=5000, help="images per point, split over the classes")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU)")
    p.add_argument("--out", default=None, help="results folder (default $BENCH_OUT or benchmarks/results)")
    p.add_argument("--resume", action="store_true", help="skip the points already in the output JSON")
    args = p.parse_args()


    from guidediff.loading import load_model
    from guidediff.metrics.evaluate import evaluate_samples
    from guidediff.errors import UsageError
    from guidediff.generation import generate, model_lam_grid
    from guidediff.runtime import resolve_device
    from guidediff.sweep import flatten_metrics

    configs = [common.parse_sampler_config(c.strip())[3] for c in args.configs.split(",") if c.strip()]
    try:
        steps_list = [int(s) for s in args.steps.split(",")]
        ws = [float(w) for w in args.w.split(",")]
    except ValueError:
        raise SystemExit(f"error: --steps {args.steps!r} and --w {args.w!r} must be comma lists of numbers, "
                         "e.g. --steps 5,10,20 --w 0,1") from None
    if min(steps_list) < 1:
        raise SystemExit(f"error: every --steps must be >= 1, got {args.steps}")
    try:
        device = resolve_device(args.device)
        json_path = common.claim_result(NAME, args.out, resume=args.resume, device=common.device_name(device))
        net, config = load_model(args.model, device)
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None
    num_classes = config.model.num_classes
    for name in configs:  # a sigma_max outside the model's schedule fails here, before any sampling
        _, grid, sigma_max, _ = common.parse_sampler_config(name)
        try:
            model_lam_grid(config, 1, device, kind=grid, schedule=getattr(net, "schedule", None), sigma_max=sigma_max)
        except UsageError as error:
            raise SystemExit(f"--configs {name}: {error}") from None
    per_class = max(1, args.n // num_classes)
    out_dir = json_path.parent
    points: list[dict] = []
    earlier: dict = {}
    if args.resume and json_path.exists():
        earlier = json.loads(json_path.read_text())
        points = earlier["points"]
    # a resumed file keeps what its earlier calls recorded: their wall time and GPU sharing
    prior_wall = earlier.get("wall_seconds") or 0.0
    prior_sharing = earlier.get("gpu_sharing_per_call") or ([earlier["gpu_sharing"]] if earlier.get("gpu_sharing") else [])
    done = {(p["config"], p["steps"], p["w"]) for p in points}
    began = common.sharing_began(device)
    shared = ("one GPU (gpu_sharing_per_call says who else was on it)" if device.type == "cuda"
              else "CPU shared with other jobs")
    payload = {
        "device": common.device_name(device), "model": args.model, "configs": configs, "n_per_point": per_class * num_classes, "steps": steps_list,
        "ws": ws, "batch_size": args.batch_size, "compiled": args.compile, "clip_x": 1.0,
        "note": f"one process, {shared}; seconds include sampling only (compilation excluded by generate)",
        "points": points, "wall_seconds": prior_wall, "gpu_sharing_per_call": prior_sharing,
    }
    start = time.time()
    print(f"{'config':18s} {'w':>4s} {'steps':>5s} {'NFE':>6s} {'FID':>8s} {'floor':>6s} {'CAS':>6s} {'s/img':>8s}")
    for name in configs:
        sampler, grid, sigma_max, _ = common.parse_sampler_config(name)
        for w in ws:
            for steps in steps_list:
                if (name, steps, w) in done:
                    continue
                result = generate(net, config, classes=list(range(num_classes)), ws=[w], n=per_class,
                                  sampler=sampler, steps=steps, grid=grid, sigma_max=sigma_max, device=device,
                                  batch_size=args.batch_size, progress=False, compile=args.compile)
                metrics = flatten_metrics(evaluate_samples(result["x"], result["y"], device=device))
                point = {"config": name, "sampler": sampler, "grid": grid, "sigma_max": sigma_max, "w": w,
                         "steps": steps,
                         "nfe_per_image": result["nfe_per_image"], "sec_per_image": result["seconds"] / len(result["x"]),
                         **{k: metrics[k] for k in ("n", "fid", "fid_floor", "is", "cas", "precision", "recall")}}
                points.append(point)
                print(f"{name:18s} {w:4g} {steps:5d} {point['nfe_per_image']:6.1f} {point['fid']:8.3f} "
                      f"{point['fid_floor']:6.3f} {point['cas']:6.3f} {point['sec_per_image']:8.5f}", flush=True)
                payload["wall_seconds"] = prior_wall + time.time() - start
                payload["gpu_sharing_per_call"] = [*prior_sharing, common.sharing_record(began, device)]
                common.write_result(NAME, payload, str(out_dir))
                plot(payload, out_dir / f"{NAME}.png")
    summarize(payload)
    common.write_result(NAME, payload, str(out_dir))


def summarize(payload: dict) -> None:
    """The issue's goals: the best new sampler at 10 steps within 1.15x of DDIM-50; at 5 steps below DDIM-10."""
    goals = {}
    for w in payload["ws"]:
        pts = {(p["config"], p["steps"]): p["fid"] for p in payload["points"] if p["w"] == w}
        ddim50, ddim10 = pts.get(("ddim-u", 50)), pts.get(("ddim-u", 10))
        new = [c for c in payload["configs"] if not c.startswith(("ddim", "ancestral"))]
        best10 = min(((pts[(c, 10)], c) for c in new if (c, 10) in pts), default=None)
        best5 = min(((pts[(c, 5)], c) for c in new if (c, 5) in pts), default=None)
        goals[str(w)] = {
            "ddim_50": ddim50, "ddim_10": ddim10, "best_new_10": best10, "best_new_5": best5,
            "best_10_within_1.15x_ddim_50": None if not (best10 and ddim50) else best10[0] <= 1.15 * ddim50,
            "best_5_beats_ddim_10": None if not (best5 and ddim10) else best5[0] < ddim10,
        }
        print(f"w={w:g}: {goals[str(w)]}")
    payload["goals"] = goals


if __name__ == "__main__":
    main()
