"""Sampler choices for the commands, read from the sampler registry."""

from __future__ import annotations


def sampler_names() -> list[str]:
    from guidediff.samplers import SAMPLERS

    return list(SAMPLERS)
