"""Settings read from the environment: checked when they are used, with the variable's name in the error."""

from __future__ import annotations

import math
import os

from pipeline.exceptions import InvalidArgumentError

__all__ = ["env_seconds"]


def env_seconds(name: str, default: float) -> float:
    """`$name` as a finite number of seconds > 0; `default` when it is unset or empty. Anything else (a word,
    0, a negative number, nan, inf) raises InvalidArgumentError naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"${name} must be a number of seconds; got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"${name} must be a finite number of seconds > 0; got {raw!r}")
    return value
