"""Sampler choices for the commands, read from the sampler registry."""

from __future__ import annotations

from guidediff.parsing import finite_float


def sampler_names() -> list[str]:
    from guidediff.samplers import SAMPLERS

    return list(SAMPLERS)


GRID_NAMES = ("u", "lambda", "karras")  # schedules.GRIDS, without importing torch


def add_grid_argument(p) -> None:
    p.add_argument("--grid", choices=GRID_NAMES, default="u",
                   help="step grid: u (the schedule's own, default), lambda (uniform in log-SNR), "
                        "karras (EDM's rho=7 grid in sigma/alpha)")
    p.add_argument("--sigma-max", type=finite_float, default=None, metavar="S",
                   help="start the step grid at sigma/alpha = S (EDM's sigma_max; EDM uses 80) instead of the "
                        "schedule's noisiest point (default), so few steps are not spent on pure noise")
