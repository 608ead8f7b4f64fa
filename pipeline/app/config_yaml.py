"""The YAML side of pipeline configs: `${VAR}` expansion, `--set` overrides, and error messages that name the key
and the line (or the `--set` that gave the bad value)."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.exceptions import ConfigError

__all__ = ["LocatedError", "expand_env", "expand_tree", "first_line", "format_errors", "line_of", "override",
           "parse_override", "yaml_problem"]


class LocatedError(ValueError):
    """A cross-section check that knows which key to blame (pydantic would blame the whole config)."""

    def __init__(self, loc: tuple[str, ...], message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


# ---------------------------------------------------------------------------------------------------------------
# ${VAR} expansion

# `${VAR}`, `${VAR:-default}` (default also when VAR is empty, as in the shell), and `$$` for a literal `$`.
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """Expand `${VAR}` / `${VAR:-default}` / `$$` in `text`. An unset VAR without a default raises KeyError(VAR)."""
    env = os.environ if env is None else env

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise KeyError(name)
            return default
        return value

    return _ENV_RE.sub(sub, text)


_STR_TAG = "tag:yaml.org,2002:str"


def expand_tree(root: yaml.Node, where: str) -> None:
    """Expand variables in the string scalars of a node tree, in place; refuse duplicate keys.

    A plain (unquoted) value that is exactly one `${...}` is re-read as YAML, as if its value had been written
    there: `batch_size: ${BATCH:-8}` is the number 8. A quoted one stays a string.
    """
    resolver = yaml.SafeLoader("")
    seen: set[int] = set()

    def walk(node: yaml.Node, path: tuple) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                if key in first:
                    raise ConfigError(
                        f"{where}, line {k.start_mark.line + 1}: {_dotted(path + (key,))}: duplicate key "
                        f"(first at line {first[key]})"
                    )
                first[key] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))
        elif isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG and "$" in node.value:
            try:
                value = expand_env(node.value)
            except KeyError as exc:
                name = exc.args[0]
                raise ConfigError(
                    f"{where}, line {node.start_mark.line + 1}: {_dotted(path)}: environment variable {name} is "
                    f"not set; set it, or give a default: ${{{name}:-default}}"
                ) from None
            whole = _ENV_RE.fullmatch(node.value) is not None and node.value != "$$"
            node.value = value
            if whole and node.style is None:
                node.tag = resolver.resolve(yaml.ScalarNode, value, (True, False))

    walk(root, ())
    resolver.dispose()


# ---------------------------------------------------------------------------------------------------------------
# --set overrides


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`"predict.batch_size=32"` -> (("predict", "batch_size"), 32). The value is read as YAML: numbers, true/false,
    null, `[1, 2]`, `{a: 1}`; anything else is a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = tuple(key.split("."))
    if not sep or not key or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. --set predict.batch_size=32")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({first_line(exc)})") from None
    return parts, value


def override(data: dict[str, Any], parts: tuple[str, ...], value: Any, text: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {text!r}: {_dotted(parts[: i + 1])} is {type(child).__name__} {child!r}, not a section"
            )
        node = child
    node[parts[-1]] = value


def format_errors(exc: ValidationError, root: yaml.MappingNode, where: str,
                  overridden: dict[tuple[str, ...], str], keys: dict[str | None, list[str]]) -> str:
    """pydantic's errors as one message: each names the key, and the line (or the `--set`) its value came from.
    `keys`: the keys each section allows (None: the sections), for did-you-mean hints."""
    lines: list[tuple[int, str]] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, LocatedError):
            loc, message = ctx_error.loc, ctx_error.message
        else:
            message = _describe(err, loc, keys)
        origin = _origin(loc, root, overridden)
        lines.append((_locate(root, loc) or 1 << 30, f"{origin}{_dotted(loc) or '(top level)'}: {message}"))
    lines = [text for _, text in sorted(lines, key=lambda t: t[0])]
    if len(lines) == 1:
        return f"{where}, {lines[0]}" if lines[0].startswith("line ") else f"{where}: {lines[0]}"
    return f"{where}: {len(lines)} problems:\n" + "\n".join(f"  {ln}" for ln in lines)


def _origin(loc: tuple, root: yaml.MappingNode, overridden: dict[tuple[str, ...], str]) -> str:
    """Where the value at `loc` came from: "line N: ", "--set K=V: ", or "line N (with --set K=V): "."""
    line = _locate(root, loc)
    at = f"line {line}" if line is not None else ""
    for parts, text in overridden.items():
        if loc[: len(parts)] == parts:  # the error is in the value an override set
            return f"--set {text}: "
    for parts, text in overridden.items():
        if loc and parts[: len(loc)] == loc:  # an override changed something inside the section in error
            return f"{at} (with --set {text}): ".lstrip()
    return f"{at}: " if at else ""


def _locate(root: yaml.Node, loc: tuple) -> int | None:
    """The line (1-based) of the deepest key of `loc` present in the file."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def line_of(path: Path | None, dotted: str) -> int | None:
    """Line of a dotted key (`input.paths[1]`) in a config file, for messages after loading."""
    if path is None:
        return None
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None
    loc: list = []
    for part in dotted.split("."):
        m = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        loc.extend([m.group(1), int(m.group(2))] if m else [part])
    return _locate(root, tuple(loc)) if root is not None else None


_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe(err: dict[str, Any], loc: tuple, keys: dict[str | None, list[str]]) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = loc[-2] if len(loc) >= 2 else None
        allowed = keys[parent] if parent in keys else keys[None]
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = "unknown key" if parent is not None else "unknown section"
        return f"{what}{hint}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return "required section is missing" if len(loc) == 1 else "required key is missing"
    if kind == "value_error":
        msg = str(err["msg"])
        return msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
    got = f", got {value!r}" if value is not None else ", got nothing (null)"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}{got}"
    if kind == "literal_error":
        return f"expected one of {err['ctx']['expected']}{got}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"expected a number {kind.replace('_', ' ')} {next(iter(err['ctx'].values()))}{got}"
    if kind in ("too_short", "too_long"):
        return f"{err['msg'][0].lower()}{err['msg'][1:]}{got}"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}{got}"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def yaml_problem(exc: yaml.YAMLError) -> str:
    """", line 2, column 1: not valid YAML: expected ',' or ']' (while parsing a flow sequence at line 1)"."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f": not valid YAML: {first_line(exc)}"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    during = f" ({context} at line {cmark.line + 1})" if context and cmark is not None else ""
    return f", line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}{during}"


def first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
