"""A tiny TOML writer: enough for repogate configs, and checked against tomllib on every call.

The standard library reads TOML but cannot write it, and the lab should not pull a dependency
for this. Supported: strings, ints, floats, bools, lists of those, nested tables and arrays of
tables. Every document is parsed back with tomllib and compared, so a writer bug shows up as
an error here rather than as a confusing config error from repogate.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

TomlTable: TypeAlias = Mapping[str, Any]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def dumps(data: TomlTable) -> str:
    """Serialise a mapping to TOML text; raise TypeError for values TOML cannot hold."""
    lines: list[str] = []
    _emit_table(lines, (), data)
    text = "\n".join(lines).strip("\n") + "\n"
    if tomllib.loads(text) != _plain(data):
        raise AssertionError(f"TOML writer round-trip mismatch:\n{text}")
    return text


def _emit_table(lines: list[str], path: tuple[str, ...], table: TomlTable) -> None:
    # Scalars (and inline arrays) must come before any sub-table header, or they would be
    # read as belonging to that sub-table.
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if _is_nested(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        sub = (*path, key)
        header = ".".join(_key(k) for k in sub)
        if isinstance(value, Mapping):
            # A table holding only sub-tables needs no header of its own: `[a.b]` implies `a`.
            if not value or not all(_is_nested(v) for v in value.values()):
                lines += ["", f"[{header}]"]
            _emit_table(lines, sub, value)
        else:
            for item in value:
                lines += ["", f"[[{header}]]"]
                _emit_table(lines, sub, item)


def _is_nested(value: object) -> bool:
    return isinstance(value, Mapping) or _is_table_array(value)


def _is_table_array(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(isinstance(item, Mapping) for item in value)
    )


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: object) -> str:
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"refusing to write non-finite float {value!r} to a config")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def _plain(value: Any) -> Any:
    """Normalise mappings and sequences to dict and list, as tomllib returns them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
