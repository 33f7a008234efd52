"""The guidance registry: every guidance method is looked up here by name.

A method declares its options (``options.Option``), which extra network it needs (``needs``: None,
"guide" for a guide model, "classifier" for a noisy classifier) and a builder
``build(denoiser, w, null_class, context, **options) -> denoiser``. ``w`` is a number or one
weight per row; ``context`` carries the extra networks as callables. A builder that must act
inside the sampler (classifier guidance's mean form) returns a ``Guided``: a denoiser plus the
sampler options it needs. The commands, the config and ``generate`` read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from guidediff.errors import UsageError
from guidediff.options import Option, resolve_options

NEEDS = {"guide": "guide_net", "classifier": "classifier"}  # what each need is called in generate


@dataclass(frozen=True)
class GuidanceContext:
    """What a builder may use besides the denoiser: the guide model as a denoiser (autoguidance)
    and ∇_z log p(c | z, λ) of a noisy classifier (classifier guidance)."""

    guide: Callable | None = None
    grad_log_prob: Callable | None = None


class Guided:
    """A guided denoiser plus the sampler options it needs (e.g. {"mean_shift": ...})."""

    def __init__(self, denoiser: Callable, sampler_options: dict[str, Any]):
        self.denoiser, self.sampler_options = denoiser, dict(sampler_options)

    def __call__(self, *args):
        return self.denoiser(*args)


@dataclass(frozen=True)
class GuidanceSpec:
    """``weight``: what the knob is called ("w", or "scale" for classifier guidance).
    ``cheap_at``: scalar weights at which the builder needs one forward per step (generate batches
    those apart). ``check_net(model_config, net)`` checks the extra network against the model."""

    name: str
    build: Callable
    options: tuple[Option, ...]
    help: str
    needs: str | None = None
    weight: str = "w"
    cheap_at: tuple[float, ...] = ()
    check_net: Callable | None = None

    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        return resolve_options(f"guidance {self.name}", self.options, options)


GUIDANCE: dict[str, GuidanceSpec] = {}


def register_guidance(name: str, *, help: str, options: tuple[Option, ...] | list[Option] = (), needs: str | None = None,
                      weight: str = "w", cheap_at: tuple[float, ...] = (), check_net: Callable | None = None):
    """Decorator over a builder: ``@register_guidance("rescale", help=..., options=(Option(...),))``."""
    if needs is not None and needs not in NEEDS:
        raise ValueError(f"needs must be one of {', '.join(NEEDS)} or None, got {needs!r}")

    def wrap(build: Callable) -> Callable:
        if name in GUIDANCE and GUIDANCE[name].build is not build:
            raise ValueError(f"a guidance method named {name!r} is already registered")
        GUIDANCE[name] = GuidanceSpec(name, build, tuple(options), help, needs, weight, tuple(cheap_at), check_net)
        return build

    return wrap


def get_guidance(name: str) -> GuidanceSpec:
    if name not in GUIDANCE:
        raise UsageError(f"unknown guidance method {name!r}; choose one of {', '.join(GUIDANCE)}")
    return GUIDANCE[name]


def cfg_variants() -> list[str]:
    """The choices of sample.cfg_variant / --cfg-variant: plain, or a method weighted by w other
    than plain CFG and the distilled student's (interval, rescale, apg, autoguidance, ...)."""
    return ["plain", *(n for n, spec in GUIDANCE.items() if spec.weight == "w" and n not in ("cfg", "distilled"))]
