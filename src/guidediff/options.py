"""Declared options of a registered sampler or guidance method: name, type, default, help and an
optional check. The command line, the config and validation read these declarations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from guidediff.errors import UsageError

# the value types an option can have on the command line and in a config file
PLAIN_TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class Option:
    """One knob. ``check(value)`` returns an error message for a bad value, or None (it is not
    called for None). A float option must be a finite number before its check runs (NaN would
    slip through every comparison); ``allow_inf`` lets ±inf through where it means "no limit".
    Options whose ``type`` is not a plain value (a callable hook, say) are for library callers
    only: they get no command-line form."""

    name: str
    type: Any
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    allow_inf: bool = False

    @property
    def is_flag(self) -> bool:
        return self.type in PLAIN_TYPES

    def validate(self, value: Any, owner: str) -> None:
        message = _not_finite(value, self.allow_inf) if self.type is float and value is not None else None
        if message is None and self.check is not None and value is not None:
            message = self.check(value)
        if message:
            raise UsageError(f"{owner} option {self.name} {message}")


def _not_finite(value: Any, allow_inf: bool) -> str | None:
    """The generic check of a float option: an error message for NaN (and ±inf unless allowed)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return f"must be a number, got {value!r}"
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        return f"must be a finite number, got {value}"
    return None


def resolve_options(owner: str, declared: tuple[Option, ...], given: dict[str, Any]) -> dict[str, Any]:
    """Every declared option with its value (given, else the default), checked; an unknown key is an
    error naming the known ones."""
    known = {o.name for o in declared}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"{owner} has no option {', '.join(unknown)}; its options are {', '.join(sorted(known)) or 'none'}")
    out = {}
    for o in declared:
        out[o.name] = given.get(o.name, o.default)
        o.validate(out[o.name], owner)
    return out


def parse_assignments(items: list[str] | None, declared: dict[str, Option], what: str,
                      flag: str | None = None) -> dict[str, Any]:
    """``["eta=0.5", "clip_x=none"]`` -> {"eta": 0.5, "clip_x": None}, typed by the declared options
    (the commands' --sampler-opt / --guidance-opt, named by ``flag`` in the errors) and checked."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in declared:
            raise UsageError(f"{what} option {item!r} is not NAME=VALUE with NAME one of "
                             f"{', '.join(sorted(declared)) or '(none)'}")
        option = declared[key]
        if not option.is_flag:
            raise UsageError(f"{what} option {key} is for library callers only")
        out[key] = _parse_value(text.strip(), option.type, f"{what} option {key}")
        option.validate(out[key], f"{flag} {item}: {what}" if flag else what)
    return out


def _parse_value(text: str, tp: Any, where: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    try:
        if tp is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return tp(text)
    except ValueError:
        raise UsageError(f"{where} takes {tp.__name__} values, got {text!r}") from None
