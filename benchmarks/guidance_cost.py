"""What each guidance method costs per image, measured side by side in one process on one GPU.

Every method samples the same images (same classes, seeds, DDIM steps, batch size, bf16, eager)
with the shipped reference model; the table gives the median seconds per image over --repeats runs,
the network evaluations per image (NFE: a guided step of CFG costs 2, the guidance interval's
unguided steps 1, autoguidance's guide forward counts as one) and, for classifier guidance, the
classifier gradients per image. Ratios are against unguided sampling (w = 0) of the same run.
Writes benchmarks/results/guidance_cost.json (or $BENCH_OUT); an earlier result there is refused
before any work unless BENCH_OVERWRITE=1.

    python benchmarks/guidance_cost.py --noisy-classifier NC --guide-model GUIDE [--n 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from guidediff.loading import load_model  # noqa: E402
from guidediff.generation import generate  # noqa: E402


def methods(w: float, scale_uncond: float, scale_cond: float) -> dict[str, dict]:
    """Name → generate() options. The knob values are the ones compared in docs/guidance_variants.md."""
    return {
        "unguided (w=0)": {"ws": [0.0]},
        f"CFG w={w:g}": {"ws": [w]},
        f"interval [-4,3] w={w:g}": {"ws": [w], "cfg_variant": {"name": "interval", "lam_lo": -4.0, "lam_hi": 3.0}},
        f"interval [-2,2] w={w:g}": {"ws": [w], "cfg_variant": {"name": "interval", "lam_lo": -2.0, "lam_hi": 2.0}},
        f"rescale phi=0.7 w={w:g}": {"ws": [w], "cfg_variant": {"name": "rescale", "phi": 0.7}},
        f"APG eta=0 w={w:g}": {"ws": [w], "cfg_variant": {"name": "apg", "eta": 0.0, "momentum": -0.5,
                                                           "norm_threshold": None}},
        f"autoguidance w={w:g}": {"ws": [w], "cfg_variant": {"name": "autoguidance"}, "guide": True},
        f"CG uncond s={scale_uncond:g}": {"ws": [scale_uncond], "guidance": "classifier", "base": "uncond"},
        f"CG cond s={scale_cond:g}": {"ws": [scale_cond], "guidance": "classifier", "base": "cond"},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-cfg")
    p.add_argument("--noisy-classifier", required=True, help="for classifier guidance")
    p.add_argument("--guide-model", required=True, help="for autoguidance")
    p.add_argument("--n", type=int, default=500, help="images per method and repeat (one batch)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--w", type=float, default=1.0)
    p.add_argument("--scale-uncond", type=float, default=3.0)
    p.add_argument("--scale-cond", type=float, default=1.0)
    args = p.parse_args()
    common.claim_result("guidance_cost")  # before any model loads: an earlier result is replaced only when told
    from guidediff.classifier_guidance import load_noisy_classifier

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    began = common.sharing_began(device)
    net, config = load_model(args.model, device)
    guide, _ = load_model(args.guide_model, device)
    classifier, _ = load_noisy_classifier(args.noisy_classifier, device)
    per_class = max(args.n // 10, 1)
    rows = {}
    for name, spec in methods(args.w, args.scale_uncond, args.scale_cond).items():
        options = {k: v for k, v in spec.items() if k not in ("ws", "guide")}
        if spec.get("guide"):
            options["guide_net"] = guide
        if options.get("guidance") == "classifier":
            options["classifier"] = classifier
        seconds, result = [], None
        for repeat in range(args.repeats + 1):  # the first run warms up (allocator, cuDNN), untimed
            result = generate(net, config, list(range(10)), spec["ws"], per_class, steps=args.steps, seed=repeat,
                              device=device, batch_size=per_class * 10, progress=False, **options)
            if repeat:
                seconds.append(result["seconds"] / len(result["x"]))
        rows[name] = {"sec_per_image": statistics.median(seconds), "runs": seconds,
                      "nfe_per_image": result["nfe_per_image"],
                      "classifier_evals_per_image": result.get("classifier_evals_per_image")}
    base = rows["unguided (w=0)"]["sec_per_image"]
    print(f"{'method':28s} {'ms/img':>8s} {'x unguided':>10s} {'NFE':>6s}")
    for name, row in rows.items():
        row["ratio_vs_unguided"] = row["sec_per_image"] / base
        print(f"{name:28s} {1e3 * row['sec_per_image']:8.2f} {row['ratio_vs_unguided']:10.2f} {row['nfe_per_image']:6.1f}")
    common.write_result("guidance_cost", {
        "task": {"model": args.model, "n": per_class * 10, "steps": args.steps, "repeats": args.repeats,
                 "batch": per_class * 10, "sampler": "ddim", "bf16": device.type == "cuda", "compiled": False,
                 "guide_model": args.guide_model, "noisy_classifier": args.noisy_classifier},
        "methods": rows, "gpu_sharing": common.sharing_record(began, device)})


if __name__ == "__main__":
    main()
