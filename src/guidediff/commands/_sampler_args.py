"""The sampler and step-grid flags shared by `sample`, `sweep` and `toy` (names only: no torch import)."""

from __future__ import annotations

SAMPLER_NAMES = ("ddim", "ancestral", "dpmpp-2m", "heun", "unipc")
GRID_NAMES = ("u", "lambda", "karras")


def add_sampler_arguments(p, *, default: str | None = "ddim") -> None:
    where = "the model config's sample.sampler" if default is None else default
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=default,
                   help=f"ddim, ancestral (CFG paper), dpmpp-2m (DPM-Solver++ 2M), heun (EDM, 2 evaluations per "
                        f"step but the last), unipc (UniPC-bh2); default {where}")
    p.add_argument("--grid", choices=GRID_NAMES, default="u",
                   help="step grid: u (the schedule's own, default), lambda (uniform in log-SNR), "
                        "karras (EDM's rho=7 grid in sigma/alpha)")
