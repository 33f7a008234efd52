"""Sampler choices for the commands, read from the sampler registry."""

from __future__ import annotations


def sampler_names() -> list[str]:
    from guidediff.samplers import SAMPLERS

    return list(SAMPLERS)


GRID_NAMES = ("u", "lambda", "karras")  # schedules.GRIDS, without importing torch


def add_grid_argument(p) -> None:
    p.add_argument("--grid", choices=GRID_NAMES, default="u",
                   help="step grid: u (the schedule's own, default), lambda (uniform in log-SNR), "
                        "karras (EDM's rho=7 grid in sigma/alpha)")
