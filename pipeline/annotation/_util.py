"""Small helpers shared by the annotation modules: JSON numbers, pass-through keys, colours, field checks."""

from __future__ import annotations

import colorsys
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.exceptions import FormatError, InvalidArgumentError

__all__ = ["as_float", "check_color", "color_for_name", "extra_keys", "frozen", "hex_to_rgb", "json_num", "optional", "require"]

_HEX_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")


class FrozenDict(dict):
    """A read-only dict for the JSON kept on immutable records (pass-through keys, geometry_config). Unlike
    `types.MappingProxyType` it pickles, so records travel between Ray workers."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("this mapping is read-only; build a new record with .clone(...) instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly  # type: ignore

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(map(repr, self.items()))))


def frozen(mapping: Mapping[str, Any] | None) -> FrozenDict:
    """A `FrozenDict` copy of `mapping` (None: empty)."""
    return mapping if isinstance(mapping, FrozenDict) else FrozenDict(mapping or {})


def json_num(value: float) -> int | float:
    """A coordinate as written to JSON: rounded to 2 decimals; an integral value is written as an int.

    One rule for every coordinate keeps files byte-stable: reading `12` or `12.0` and writing again gives `12`,
    reading `3.14159` gives `3.14`, and a second round trip changes nothing.
    """
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"coordinate must be a finite number; got {value!r}")
    rounded = round(value, 2)
    if rounded == int(rounded):
        return int(rounded)
    return rounded


def as_float(value: Any, what: str) -> float:
    """`value` as a finite float; a bool, a string or NaN is an `InvalidArgumentError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_numpy_number(value):
        raise InvalidArgumentError(f"{what} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{what} must be a finite number; got {value!r}")
    return value


def _is_numpy_number(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iuf"


def extra_keys(data: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The keys of `data` this model does not interpret, kept so that a read-write round trip is lossless."""
    known = set(known)
    return {k: v for k, v in data.items() if k not in known}


def require(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`data[key]`, checked to be a dict and to hold a value of `kind`; else a `FormatError` saying where."""
    if not isinstance(data, dict):
        raise FormatError(f"{where}: expected a JSON object; got {type(data).__name__}")
    if key not in data:
        raise FormatError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise FormatError(f"{where}: {key!r} must be {names}; got {value!r:.80}")
    return value


def optional(data: dict, key: str, kind: type | tuple[type, ...], default: Any, where: str) -> Any:
    """Like `require`, but an absent key gives `default`."""
    if key not in data:
        return default
    return require(data, key, kind, where)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def color_for_name(name: str) -> str:
    """A deterministic, well-saturated colour `#RRGGBB` for a class or tag name (same name, same colour)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.65 + digest[2] / 255.0 * 0.3  # 0.65..0.95: vivid enough to read on photos
    value = 0.75 + digest[3] / 255.0 * 0.25  # 0.75..1.0: never near black
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}"


def check_color(color: str, where: str) -> str:
    """`color` if it is `#RRGGBB`, else an `InvalidArgumentError`."""
    if not isinstance(color, str) or not _HEX_COLOR.match(color):
        raise InvalidArgumentError(f"{where}: color must be '#RRGGBB'; got {color!r}")
    return color


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b), each 0..255."""
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
