"""Guidance variants on the 2-D gmm3 toy with exact scores (issue 10).

For each variant (CFG, guidance interval, CFG rescale, APG, autoguidance) at a few knob values and
guidance weights w, DDIM (η = 0, 100 steps, the CFG schedule) draws n samples per class from the
exact mixture oracle; the table reports, averaged over the three classes, the sliced-Wasserstein-2
distance to exact draws of the tilted density p̃_w(x|c) ∝ p(x|c)·p(c|x)^w (what CFG aims at), to
exact draws of p(x|c), and the measured NFE per image. ``floor`` is the distance between two
independent exact tilted sets of the same size (the noise level of the metric).

Autoguidance needs a weaker conditional model: here the same mixture with every covariance
multiplied by ``--guide-blur`` (a "less-trained", over-smoothed p(x|c)); its target is a sharpened
p(x|c), not p̃_w, so its column to p(x|c) is the relevant one.

    python benchmarks/toy_guidance_variants.py            # ~1-2 min on 2 CPU cores
    python benchmarks/toy_guidance_variants.py --n 500    # smoke test

Writes benchmarks/results/toy_guidance_variants.json (or $BENCH_OUT/...) via common.write_result; an
earlier result there is refused before any work unless BENCH_OVERWRITE=1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import claim_result, write_result  # noqa: E402

from guidediff import guidance, samplers, schedules  # noqa: E402
from guidediff.data.toy2d import gmm3  # noqa: E402
from guidediff.toy.distances import sliced_wasserstein  # noqa: E402
from guidediff.toy.gmm import GaussianMixture  # noqa: E402
from guidediff.toy.tilted import sample_tilted  # noqa: E402


def blurred(mixture: GaussianMixture, factor: float) -> GaussianMixture:
    """The same mixture with every covariance scaled by ``factor``: a stand-in for a weaker model."""
    return GaussianMixture(mixture.means, mixture.covs * factor, mixture.weights, mixture.labels, name=f"{mixture.name}-blur{factor}")


def variants(mix: GaussianMixture, guide: GaussianMixture) -> list[tuple[str, dict, object]]:
    """(name, knobs, factory w -> (denoiser, counter)) for every configuration in the table."""
    null = mix.null_class

    def make(build):
        def factory(w):
            counter = guidance.CountingDenoiser(mix)
            return build(counter, w), [counter]

        return factory

    def make_auto(w):
        # both networks' forwards count toward the NFE
        main, weak = guidance.CountingDenoiser(mix), guidance.CountingDenoiser(guide)
        return guidance.autoguidance(main, weak, w), [main, weak]

    rows = [
        ("conditional", {"w_used": 0.0}, make(lambda d, w: d)),  # no guidance: how far p(x|c) is from p̃_w
        ("cfg", {}, make(lambda d, w: guidance.cfg(d, w, null))),
    ]
    for lo, hi in [(-4.0, 4.0), (-2.0, 8.0), (0.0, math.inf), (-math.inf, 0.0)]:
        rows.append(("interval", {"lam_lo": lo, "lam_hi": hi}, make(lambda d, w, lo=lo, hi=hi: guidance.cfg_interval(d, w, null, lo, hi))))
    for phi in (0.3, 0.7, 1.0):
        rows.append(("rescale", {"phi": phi}, make(lambda d, w, phi=phi: guidance.cfg_rescale(d, w, null, phi))))
    for eta, beta, r in [(0.0, 0.0, None), (0.0, -0.5, None), (0.0, -0.5, 0.3), (0.0, 0.0, 0.3)]:
        knobs = {"eta": eta, "momentum": beta, "norm_threshold": r}
        rows.append(("apg", knobs, make(lambda d, w, k=knobs: guidance.apg(d, w, null, **k))))
    rows.append(("autoguidance", {"guide": guide.name}, make_auto))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="samples per class and per configuration")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--guide-blur", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    claim_result("toy_guidance_variants")  # before any work: an earlier result is replaced only when told

    mix = gmm3()
    guide = blurred(mix, args.guide_blur)
    classes = list(range(mix.num_classes))
    lams = schedules.lam_grid(schedules.make_schedule("cfg"), args.steps, dtype=torch.float64)
    y = torch.tensor(classes).repeat_interleave(args.n)
    z0 = torch.randn(len(y), 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    gen = torch.Generator().manual_seed(args.seed + 1)
    ref_tilted = {(w, c): sample_tilted(mix, c, w, args.n, generator=gen) for w in args.weights for c in classes}
    ref_again = {(w, c): sample_tilted(mix, c, w, args.n, generator=gen) for w in args.weights for c in classes}
    ref_cond = {c: mix.sample(args.n, classes=torch.tensor(c), generator=gen)[0] for c in classes}

    def mean_over_classes(x: torch.Tensor, ref) -> float:
        return sum(sliced_wasserstein(x[y == c], ref(c)) for c in classes) / len(classes)

    floor = {w: sum(sliced_wasserstein(ref_tilted[w, c], ref_again[w, c]) for c in classes) / len(classes) for w in args.weights}
    results = []
    start = time.perf_counter()
    for name, knobs, factory in variants(mix, guide):
        for w in args.weights:
            denoiser, counters = factory(w)
            with torch.no_grad():
                x = samplers.sample_ddim(denoiser, z0.clone(), lams, y)
            row = {
                "variant": name,
                "knobs": knobs,
                "w": w,
                "nfe_per_image": sum(k.evaluations for k in counters) / len(y),
                "sw_to_tilted": mean_over_classes(x, lambda c, w=w: ref_tilted[w, c]),
                "sw_to_cond": mean_over_classes(x, lambda c: ref_cond[c]),
            }
            results.append(row)
            print(f"{name:12s} {str(knobs):60s} w={w:<4} nfe={row['nfe_per_image']:6.1f} "
                  f"SW(tilted)={row['sw_to_tilted']:.4f} SW(p(x|c))={row['sw_to_cond']:.4f}", flush=True)
    write_result(
        "toy_guidance_variants",
        {
            "data": "gmm3",
            "sampler": "ddim eta=0",
            "steps": args.steps,
            "schedule": "cfg [-20, 20]",
            "n_per_class": args.n,
            "guide_blur": args.guide_blur,
            "floor_tilted_vs_tilted": floor,
            "seconds": time.perf_counter() - start,
            "rows": results,
        },
    )


if __name__ == "__main__":
    main()
