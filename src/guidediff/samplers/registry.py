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

# the value types an option can have on the command line and in a config file
PLAIN_TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class Option:
    """One knob of a sampler (or guidance method). ``check(value)`` returns an error message for a
    bad value, or None. Options whose ``type`` is not a plain value (a callable hook, say) are for
    library callers only: they get no command-line flag."""

    name: str
    type: Any
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None

    @property
    def is_flag(self) -> bool:
        return self.type in PLAIN_TYPES

    def validate(self, value: Any, owner: str) -> None:
        message = self.check(value) if self.check is not None and value is not None else None
        if message:
            raise UsageError(f"{owner} option {self.name}: {message}")


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
        known = {o.name for o in self.options}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"sampler {self.name} has no option {', '.join(unknown)}; its options are "
                             f"{', '.join(sorted(known)) or 'none'}")
        out = {}
        for o in self.options:
            out[o.name] = options.get(o.name, o.default)
            o.validate(out[o.name], f"sampler {self.name}")
        return out


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
