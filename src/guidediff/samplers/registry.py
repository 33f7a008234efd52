"""The sampler registry: every sampler is looked up here by name, with the options it declares.

A sampler is a function ``fn(denoiser, z, lams, c, *, generator=None, progress=False, **options)``
that returns the clean sample; ``denoiser(z, lam[B], c[B]) -> eps_hat`` and ``lams`` is the
increasing log-SNR grid (steps + 1 values, noisy -> clean). Its options are declared as ``Option``s;
the command line, the ``[sample]`` config table and validation read them from ``SAMPLERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from guidediff.errors import UsageError
from guidediff.options import PLAIN_TYPES, Option, resolve_options

__all__ = ["PLAIN_TYPES", "SAMPLERS", "Option", "SamplerSpec", "get_sampler", "register_sampler"]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: Callable
    options: tuple[Option, ...]
    help: str

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options this sampler takes, checked, defaults filled in; an unknown key is an error."""
        return resolve_options(f"sampler {self.name}", self.options, options)


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, *, help: str, options: tuple[Option, ...] | list[Option] = ()):
    """Decorator: ``@register_sampler("ddim", help=..., options=(Option(...), ...))`` over the function."""

    def wrap(fn: Callable) -> Callable:
        if name in SAMPLERS and SAMPLERS[name].fn is not fn:
            raise ValueError(f"a sampler named {name!r} is already registered")
        SAMPLERS[name] = SamplerSpec(name, fn, tuple(options), help)
        return fn

    return wrap


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
