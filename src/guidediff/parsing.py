"""Parsing of command-line lists, with one-line errors."""

from __future__ import annotations

import math

from guidediff.errors import UsageError


def parse_floats(text: str, flag: str, example: str = "0,1,3") -> list[float]:
    """'0,0.5,3' -> [0.0, 0.5, 3.0]; every value must be a finite number (``example`` shows the
    flag's form in the errors)."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"{flag}: {part!r} is not a number; {flag} takes comma-separated numbers, e.g. {flag}={example}") from None
        if not math.isfinite(value):
            raise UsageError(f"{flag}: {part} is not finite; use finite numbers such as {flag}={example}")
        values.append(value)
    if not values:
        raise UsageError(f"{flag} is empty; give a comma list such as {flag}={example}")
    return values


def finite_float(text: str) -> float:
    """argparse ``type=`` for a float flag: a finite number, else argparse's one-line error
    naming the flag (``argument --eta: must be a finite number, got 'nan'``)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def parse_classes(text: str, num_classes: int) -> list[int]:
    """'0-9', '0,3,5' or 'all' -> class indices, each checked against the model's class count."""
    text = str(text).strip()
    if text == "all":
        return list(range(num_classes))
    classes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if lo > hi:
                    raise UsageError(f"--classes: range {part} is empty; write it low-high, e.g. {hi}-{lo}")
                classes.extend(range(lo, hi + 1))
            else:
                classes.append(int(part))
        except ValueError:
            raise UsageError(f"--classes: {part!r} is not a class index or range; use e.g. 0-9, 0,3,5 or all") from None
    for c in classes:
        if not 0 <= c < num_classes:
            raise UsageError(f"class {c} is out of range: the model has {num_classes} classes (0-{num_classes - 1})")
    return list(dict.fromkeys(classes))
