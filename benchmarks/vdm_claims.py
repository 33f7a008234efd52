"""Two claims of the VDM paper (Kingma et al. 2021) measured on a trained model, without training.

Parts (--parts):
  T         the discrete-time bound L_T at T = --Ts (10 100 1000) against the continuous-time one
            (VDM §4: more steps give a better bound, L_T → L_∞ as T → ∞), bits/dim with 95%
            intervals on the first --n test images. Each image gets one unbiased estimate per T,
            with importance sampling over the steps (q_i ∝ w_i·√m from the pilot below; for L_∞ the
            variance-optimal shape): the same expectations as `guidediff bpd --steps T`, whose
            uniform steps leave intervals wider than the values on a fixed [−20, 20] schedule
            (--uniform adds those rows). Every T uses the same draws per image (common random
            numbers), so the paired differences L_T − L_∞ have tighter intervals.
  variance  the variance of the per-example bound estimate (VDM §5: the learned schedule lowers it,
            6.35 → 0.53 on CIFAR-10): --k independent estimates of each of --n-var test images,
            per-example variance in (bits/dim)², for three schedule shapes on the SAME network and
            the same endpoints (in continuous time the shape changes only the variance, not the
            expected bound): the model's own schedule, λ linear in u, and the variance-optimal
            shape p*(λ) ∝ √E[(½‖ε − ε̂‖²)²] estimated from --pilot training images
            (guidediff.vdm.variance) — the target that VDM's learned schedule descends towards.

--model: a VDM run directory, an exported model, or a shipped name (default fmnist-cfg, a CFG
ε-model evaluated under its fixed schedule, as `guidediff bpd fmnist-cfg` does). Results merge
into <out>/vdm_claims.json (out: --out, else $BENCH_OUT, else benchmarks/results), one key per
model and part, written after every part.

    # CPU here (one core, about 2 + 3 minutes):
    python benchmarks/vdm_claims.py --device cpu --threads 1
    # GPU, a trained VDM run (seconds):
    python benchmarks/vdm_claims.py --model RUN_DIR --n 10000 --n-var 1000 --k 32 --out $OUT
    # smoke test
    python benchmarks/vdm_claims.py --tiny --out /tmp/vdm_claims
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from guidediff.data.images import load_dataset, to_tensor_dataset  # noqa: E402
from torch import Tensor  # noqa: E402

from guidediff.vdm.bound import LN2, diffusion_loss_discrete, vlb_terms  # noqa: E402
from guidediff.vdm.bpd import evaluate_bpd, mean_ci95  # noqa: E402
from guidediff.errors import UsageError  # noqa: E402
from guidediff.vdm.loading import load_vdm  # noqa: E402
from guidediff.vdm.variance import (  # noqa: E402
    PiecewiseLinearSchedule,
    bound_draws,
    estimator_variance,
    optimal_step_probs,
    second_moment_by_bin,
    second_moment_of_shape,
    variance_optimal_schedule,
)

PARTS = ("T", "variance")


def log(msg: str) -> None:
    print(msg, flush=True)


def images(model, config, split: str, start: int, n: int, device, data_dir):
    d = config.data
    data = load_dataset(d.name, split, data_dir=data_dir or d.data_dir, resolution=d.resolution, channels=d.channels)
    if start + n > len(data.images):
        raise SystemExit(f"error: {split} split has {len(data.images)} images, asked for {start}…{start + n}; lower --n")
    x, c = to_tensor_dataset(data.images[start:start + n], data.labels[start:start + n], device=device)
    if model.num_classes == 0:
        c = torch.zeros_like(c)
    return x, c


def _batched(fn, n: int, batch_size: int) -> Tensor:
    return torch.cat([fn(slice(i, min(i + batch_size, n))).double().cpu() for i in range(0, n, batch_size)])


def _paired_rows(per_image: dict[int, Tensor], seconds: dict[int, float], Ts: list[int]) -> tuple[list, bool]:
    """bits/dim ± 95% per T (0 = continuous) and each L_T − L_∞ from the same draws."""
    rows = []
    for T in [*Ts, 0]:
        bpd, ci, _ = mean_ci95(per_image[T])
        row = {"T": T, "bpd": bpd, "bpd_ci95": ci, "seconds": seconds[T]}
        if T:
            m, h, _ = mean_ci95(per_image[T] - per_image[0])
            row["minus_continuous"] = {"bpd": m, "ci95": h}
        rows.append(row)
        log(f"  T = {T or '∞'}: {bpd:.4f} ± {ci:.4f} bits/dim" + (
            f"   L_T − L_∞ = {row['minus_continuous']['bpd']:+.4f} ± {row['minus_continuous']['ci95']:.4f}"
            if T else "") + f"  ({seconds[T]} s)")
    ordered = all(rows[i]["bpd"] > rows[i + 1]["bpd"] for i in range(len(rows) - 1))
    return rows, ordered


@torch.no_grad()
def part_T(model, x, c, edges, m, args) -> dict:
    """Importance-sampled bound per image at each T and in continuous time, same draws per image."""
    n, dims = x.shape[0], int(x[0].numel())
    g = torch.Generator().manual_seed(args.seed)
    v = torch.rand(n, generator=g, dtype=torch.float64)
    eps, eps_0 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    dev = x.device
    optimal = variance_optimal_schedule(edges, m)
    t0 = time.perf_counter()
    # prior and reconstruction (the same for every T) with L_∞ under the variance-optimal shape
    terms = [vlb_terms(model.denoiser, x[sl], c[sl], optimal, v[sl].to(dev), eps[sl].to(dev), eps_0[sl].to(dev))
             for sl in (slice(i, i + args.batch_size) for i in range(0, n, args.batch_size))]
    rest = torch.cat([(t.prior + t.reconstruction).double().cpu() for t in terms])
    per_image = {0: rest + torch.cat([t.diffusion.double().cpu() for t in terms])}
    seconds = {0: round(time.perf_counter() - t0, 1)}
    for T in args.Ts:
        t0 = time.perf_counter()
        q = optimal_step_probs(model.schedule, T, edges, m)
        diff = _batched(lambda sl: diffusion_loss_discrete(model.denoiser, x[sl], c[sl], model.schedule, v[sl].to(dev),
                                                           eps[sl].to(dev), T, step_probs=q), n, args.batch_size)
        per_image[T] = rest + diff
        seconds[T] = round(time.perf_counter() - t0, 1)
    to_bpd = 1.0 / (dims * LN2)
    rows, ordered = _paired_rows({T: vals * to_bpd for T, vals in per_image.items()}, seconds, args.Ts)
    return {"n": n, "seed": args.seed, "rows": rows, "bound_improves_with_T": ordered,
            "how": "one unbiased estimate of each test image's bound per T: the step drawn with q_i ∝ "
                   "expm1(λ_s − λ_t)·√m(λ_t) (1% uniform mixed in), m = E[(½‖ε − ε̂‖²)²] per λ bin from the "
                   "training-image pilot, weighted 1/(T·q_i); continuous time under the variance-optimal shape "
                   "with the model's endpoints (the same expectation, VDM eq. 20); one (v, ε, ε_0) per image shared "
                   "by every T; intervals 1.96·std/√n over images"}


def part_T_uniform(model, x, c, args) -> dict:
    """What `guidediff bpd --steps T` computes: uniform steps (evaluate_bpd), same seed for every T."""
    per_image, seconds = {}, {}
    for T in [*args.Ts, 0]:
        t0 = time.perf_counter()
        per_image[T] = evaluate_bpd(model, x, c, batch_size=args.batch_size, seed=args.seed, T=T, bf16=False).per_image
        seconds[T] = round(time.perf_counter() - t0, 1)
    rows, ordered = _paired_rows(per_image, seconds, args.Ts)
    return {"n": x.shape[0], "seed": args.seed, "rows": rows, "bound_improves_with_T": ordered,
            "how": "evaluate_bpd (uniform u, the model's schedule) at each T with the same seed: one u, ε, ε_0 "
                   "per image shared by every T; intervals 1.96·std/√n over images"}


def add_predicted(rows: dict, shapes: dict, edges: Tensor, m: Tensor, to_bpd: float) -> None:
    """Each shape's variance over all draws predicted by quadrature on the pilot's m(λ)
    (second_moment_of_shape), about the variance-optimal shape's mean (the most precise one);
    the sampled variances miss a steep shape's rare large draws, the quadrature does not."""
    mean = rows["variance-optimal"]["mean"]
    for name, schedule in shapes.items():
        rows[name]["predicted_total_var"] = second_moment_of_shape(schedule, edges, m) * to_bpd**2 - mean**2
        log(f"  {name:<17s} predicted variance over all draws (pilot quadrature): "
            f"{rows[name]['predicted_total_var']:.4g} (bits/dim)²")


def part_variance(model, x, c, edges, m, args) -> dict:
    """Per-example variance of the continuous-time bound estimate under three schedule shapes."""
    dims = int(x[0].numel())
    lam_max, lam_min = model.schedule.lam_max, model.schedule.lam_min
    to_bpd = 1.0 / (dims * LN2)
    shapes = {
        "model": model.schedule,
        "lam-linear": PiecewiseLinearSchedule(torch.tensor([0.0, 1.0]), torch.tensor([lam_max, lam_min])),
        "variance-optimal": variance_optimal_schedule(edges, m),
    }
    rows = {}
    for name, schedule in shapes.items():
        t0 = time.perf_counter()
        draws = bound_draws(model.denoiser, x, c, schedule, args.k, seed=args.seed, batch_size=args.batch_size)
        v = estimator_variance(draws * to_bpd)
        rows[name] = {**v.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
        log(f"  {name:<17s} bound {v.mean:.4f} bits/dim, per-example variance {v.per_example_var:.4g} ± "
            f"{v.per_example_var_ci95:.2g} (bits/dim)², all draws {v.total_var:.4g}  {rows[name]['seconds']} s")
    base = rows["model"]["per_example_var"]
    for name in rows:
        rows[name]["ratio_to_model"] = rows[name]["per_example_var"] / base
    add_predicted(rows, shapes, edges, m, to_bpd)
    return {"n": x.shape[0], "k": args.k, "pilot_images": args.pilot, "bins": args.bins,
            "lam_min": lam_min, "lam_max": lam_max, "schedule": model.vdm.schedule,
            "shapes": rows, "units": "(bits/dim)^2 of the total bound estimate (prior + reconstruction + diffusion)",
            "how": f"{args.k} independent (u, ε, ε_0) per test image, continuous time; per-example variance with "
                   f"k − 1, mean over images, 95% interval over images; the same network and endpoints for every "
                   f"shape; the variance-optimal shape from {args.pilot} training images × {args.bins} λ bins "
                   "(p ∝ √E[(½e)²] mixed with 1% uniform)"}


MIXED = "mixed: each part's device, torch and commit say where"


def file_stamp(results: dict) -> dict:
    """The file's device, torch and commit from its parts' own (each part records them)."""
    parts = [part for m in results.get("models", {}).values() for part in m.values() if isinstance(part, dict)]
    return common.stamp_from_parts(parts, MIXED)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist-cfg")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--Ts", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--n", type=int, default=500, help="test images for the T part")
    p.add_argument("--n-var", type=int, default=32, help="test images for the variance part")
    p.add_argument("--k", type=int, default=32, help="estimates per image for the variance part")
    p.add_argument("--pilot", type=int, default=16, help="training images for the variance-optimal shape")
    p.add_argument("--bins", type=int, default=32, help="λ bins of the variance-optimal shape")
    p.add_argument("--uniform", action="store_true", help="T part: also the uniform-step rows (slow to converge)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="how the device was shared, for the JSON")
    p.add_argument("--out", default=None)
    p.add_argument("--tiny", action="store_true", help="smoke test: a handful of images")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.n, args.n_var, args.k, args.pilot, args.bins, args.Ts = 8, 4, 3, 2, 4, [2, 10]

    if args.tiny and not (args.out or os.environ.get("BENCH_OUT")):  # a smoke run never lands in benchmarks/results
        args.out = tempfile.mkdtemp(prefix="vdm_claims_tiny_")
    # vdm_claims.json collects one entry per model and part over several calls, each stamped with
    # its device: the file is continued, and what a run would replace is checked per part, before
    # any work
    device = common.device_name(args.device)
    target = common.claim_result("vdm_claims", args.out, resume=True, parts_say_where=True)
    out = target.parent
    results = json.loads(target.read_text()) if target.is_file() else {}
    for k in ("device", "torch", "commit", "cuda"):
        results.pop(k, None)
    key = str(args.model)
    planned = (["bound_vs_T"] + (["bound_vs_T_uniform"] if args.uniform else []) if "T" in args.parts else []) + \
        (["estimator_variance"] if "variance" in args.parts else [])
    clash = [part for part in planned if part in results.get("models", {}).get(key, {})]
    if clash and os.environ.get("BENCH_OVERWRITE") != "1":
        raise SystemExit(f"error: {target} already holds {', '.join(clash)} of {key}; write elsewhere with --out, "
                         "or set BENCH_OVERWRITE=1 to replace them")
    try:
        model, config = load_vdm(args.model, device=args.device)
    except UsageError as exc:
        raise SystemExit(f"error: {exc}") from None
    entry = results.setdefault("models", {}).setdefault(key, {})
    start = time.perf_counter()
    began = common.sharing_began(args.device)

    def save(part: str, value: dict) -> None:
        nonlocal began
        env = common.environment()
        sharing = common.sharing_record(began, args.device)
        entry[part] = {**value, "device": device, "torch": env["torch"], "commit": env["commit"],
                       "threads": torch.get_num_threads(), "note": args.note,
                       **({"gpu_sharing": sharing} if sharing else {})}
        began = sharing["ended"] if sharing else None
        common.write_result("vdm_claims", {**results, **file_stamp(results),
                                           "wall_seconds": round(time.perf_counter() - start, 1)}, str(out))

    # the pilot: m(λ) = E[(½‖ε − ε̂‖²)²] per λ bin on training images (never the evaluated test images)
    t0 = time.perf_counter()
    edges = torch.linspace(model.schedule.lam_max, model.schedule.lam_min, args.bins + 1, dtype=torch.float64)
    xp, cp = images(model, config, "train", 0, args.pilot, args.device, args.data_dir)
    m = second_moment_by_bin(model.denoiser, xp, cp, edges, seed=args.seed + 1, batch_size=args.batch_size)
    log(f"pilot: {args.pilot} training images × {args.bins} λ bins in {time.perf_counter() - t0:.0f} s")
    if "T" in args.parts:
        log(f"== {key}: discrete-time bound against T (n = {args.n}, importance-sampled steps)")
        x, c = images(model, config, "test", 0, args.n, args.device, args.data_dir)
        save("bound_vs_T", part_T(model, x, c, edges, m, args))
        if args.uniform:
            log(f"== {key}: the same with uniform steps (guidediff bpd --steps T)")
            save("bound_vs_T_uniform", part_T_uniform(model, x, c, args))
    if "variance" in args.parts:
        log(f"== {key}: variance of the per-example bound estimate (n = {args.n_var}, k = {args.k})")
        x, c = images(model, config, "test", 0, args.n_var, args.device, args.data_dir)
        save("estimator_variance", part_variance(model, x, c, edges, m, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
