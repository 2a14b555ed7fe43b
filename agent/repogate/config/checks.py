"""Typed accessors for the config checker: they record problems instead of raising.

Every accessor takes the table, its key path and the key, so each problem is
reported with the path an admin can find in the file.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repogate.addresses import Entry, InvalidEntryError, parse_entry
from repogate.errors import ConfigProblem

MAX_PROBLEMS_PER_LIST = 20
# Group and destination names become parts of nft object names.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
IFNAME_PATTERN = re.compile(r"[^/\s:]{1,15}")  # what the kernel accepts as a link name
HOSTNAME_PATTERN = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
)
DURATION_PATTERN = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def did_you_mean(word: str, choices: set[str] | frozenset[str]) -> str:
    import difflib  # noqa: PLC0415 - only needed when reporting a problem

    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Checker:
    """Typed accessors that record problems instead of raising, so all are reported."""

    problems: list[ConfigProblem] = field(default_factory=list)

    def problem(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def table(
        self,
        raw: object,
        path: str,
        allowed: set[str] | None,
        required: set[str] | frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.problem(path, "must be a table")
            return {}
        prefix = f"{path}." if path else ""
        if allowed is not None:
            for key in raw:
                if key not in allowed:
                    self.problem(
                        f"{prefix}{key}", "unknown key" + did_you_mean(key, frozenset(allowed))
                    )
        for key in sorted(required - raw.keys()):
            self.problem(f"{prefix}{key}", "is required")
        return raw

    def name(self, path: str, name: str) -> None:
        if not NAME_PATTERN.fullmatch(name):
            self.problem(
                path,
                f"{name!r} is not a valid name (letters, digits, '_' or '-', "
                "starting with a letter, at most 32)",
            )

    def string(self, table: dict[str, Any], path: str, key: str, default: str | None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            self.problem(f"{path}.{key}", f"must be a string, not {type_name(value)}")
            return default
        if isinstance(value, str) and not value:
            self.problem(f"{path}.{key}", "must not be empty")
            return default
        return value

    def file(self, table: dict[str, Any], path: str, key: str, base: Path | None) -> Path | None:
        """A path; a relative one is relative to the config file's directory (`base`)."""
        value = self.string(table, path, key, None)
        if value is None:
            return None
        resolved = Path(value)
        return base / resolved if not resolved.is_absolute() and base is not None else resolved

    def duration(
        self, table: dict[str, Any], path: str, key: str, default: float, *, low: float = 0.0
    ) -> float:
        """Seconds from `"30s"`, `"5m"`, `"1h"`, `"1d"`, `"500ms"` or a plain number."""
        value = table.get(key)
        if value is None:
            return default
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (match := DURATION_PATTERN.fullmatch(value.strip())):
            seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
        if seconds is None:
            self.problem(f"{path}.{key}", f'{value!r} is not a duration (like "30s", "5m", "1h")')
            return default
        if seconds < low:
            self.problem(f"{path}.{key}", f"{value!r} is shorter than the minimum of {low:g}s")
            return default
        return seconds

    def choice(
        self, table: dict[str, Any], path: str, key: str, default: str, choices: tuple[str, ...]
    ) -> str:
        value = self.string(table, path, key, default)
        if value not in choices:
            self.problem(f"{path}.{key}", f"{value!r} is not one of: {', '.join(choices)}")
            return default
        return value

    def boolean(self, table: dict[str, Any], path: str, key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{path}.{key}", f"must be true or false, not {type_name(value)}")
            return default
        return value

    def fraction(self, table: dict[str, Any], path: str, key: str) -> float | None:
        """A share from `0.5` or `"50%"`, between 0 and 1; None when the key is absent."""
        value = table.get(key)
        if value is None:
            return None
        share: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            share = float(value)
        elif isinstance(value, str) and value.strip().endswith("%"):
            try:
                share = float(value.strip()[:-1]) / 100
            except ValueError:
                share = None
        if share is None or not 0 <= share <= 1:
            self.problem(f"{path}.{key}", f'{value!r} is not a share like 0.5 or "50%"')
            return None
        return share

    def hostnames(self, table: dict[str, Any], path: str, key: str) -> list[str]:
        """DNS names, lower-cased, without a trailing dot."""
        names: dict[str, None] = {}  # ordered, and a set for the duplicate check
        for index, name in enumerate(self.list_of(table, path, key, str, [])):
            normal = name.strip().rstrip(".").lower()
            if not HOSTNAME_PATTERN.fullmatch(normal) or len(normal) > 253:
                self.problem(f"{path}.{key}[{index}]", f"{name!r} is not a DNS name")
            elif normal in names:
                self.problem(f"{path}.{key}[{index}]", f"{name!r} is listed twice")
            else:
                names[normal] = None
        return list(names)

    def integer(
        self, table: dict[str, Any], path: str, key: str, default: int, *, low: int, high: int
    ) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{path}.{key}", f"must be an integer, not {type_name(value)}")
            return default
        if not low <= value <= high:
            self.problem(f"{path}.{key}", f"{value} is outside {low}-{high}")
            return default
        return value

    def list_of(
        self, table: dict[str, Any], path: str, key: str, kind: type[str], default: list[str]
    ) -> list[str]:
        value = table.get(key, default)
        if not isinstance(value, list):
            self.problem(f"{path}.{key}", f"must be a list, not {type_name(value)}")
            return []
        good: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, kind):
                good.append(item)
            else:
                self.problem(f"{path}.{key}[{index}]", f"must be a string, not {type_name(item)}")
        return good

    def ports(
        self, table: dict[str, Any], path: str, key: str, *, required: bool
    ) -> list[int] | None:
        if key not in table:
            return [] if required else None
        value = table[key]
        if not isinstance(value, list) or not value:
            self.problem(f"{path}.{key}", "must be a non-empty list of port numbers")
            return []
        ports: list[int] = []
        for index, port in enumerate(value):
            where = f"{path}.{key}[{index}]"
            if isinstance(port, bool) or not isinstance(port, int):
                self.problem(where, f"{port!r} is not a port number")
            elif not 1 <= port <= 65535:
                self.problem(where, f"{port} is outside 1-65535")
            elif port in ports:
                self.problem(where, f"{port} is listed twice")
            else:
                ports.append(port)
        return ports

    def entries(
        self,
        table: dict[str, Any],
        path: str,
        key: str,
        *,
        min_prefix: Mapping[int, int] | None,
        required: bool,
        limit_reason: str | None = None,
    ) -> list[Entry]:
        if key not in table:
            return []
        value = table[key]
        if not isinstance(value, list):
            self.problem(f"{path}.{key}", f"must be a list, not {type_name(value)}")
            return []
        if required and not value:
            self.problem(f"{path}.{key}", "must not be empty")
        entries: list[Entry] = []
        reported = 0
        for index, raw in enumerate(value):
            try:
                entry = parse_entry(raw)
            except InvalidEntryError as exc:
                message = str(exc)
            else:
                limit = min_prefix.get(entry.family) if min_prefix else None
                if limit is None or entry.prefixlen >= limit:
                    entries.append(entry)
                    continue
                setting = f"the limit set by agent.min_client_prefix_v{entry.family}"
                message = f"{raw!r} is broader than /{limit} ({limit_reason or setting})"
            reported += 1
            if reported <= MAX_PROBLEMS_PER_LIST:
                self.problem(f"{path}.{key}[{index}]", message)
        if reported > MAX_PROBLEMS_PER_LIST:
            hidden = reported - MAX_PROBLEMS_PER_LIST
            self.problem(f"{path}.{key}", f"and {hidden} more invalid entries")
        return entries


# --- helpers the parsers share ---


def group_name(check: Checker, table: dict[str, Any], path: str) -> str | None:
    name = check.string(table, path, "name", None)
    if name is not None:
        check.name(f"{path}.name", name)
    return name


def optional_duration(check: Checker, table: dict[str, Any], path: str, key: str) -> float | None:
    """A duration if the key is there, else None (the agent's default applies)."""
    return check.duration(table, path, key, -1.0) if key in table else None


def refresh_bounds(check: Checker, table: dict[str, Any], path: str) -> tuple[float, float]:
    """min_refresh and max_refresh, for TTL-driven DNS refreshes."""
    min_refresh = check.duration(table, path, "min_refresh", 30.0, low=1)
    max_refresh = check.duration(table, path, "max_refresh", 3600.0, low=1)
    if max_refresh < min_refresh:
        check.problem(f"{path}.max_refresh", "is shorter than min_refresh")
    return min_refresh, max_refresh


def check_url(check: Checker, path: str, url: str, *, allow_insecure: bool) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        check.problem(path, f"{url!r} is not an http(s) URL")
        return False
    if parts.scheme == "http" and not allow_insecure:
        check.problem(path, f"{url!r} is not HTTPS (set allow_insecure = true to allow it)")
        return False
    if parts.username or parts.password:
        check.problem(path, "must not carry credentials: use token_file")
        return False
    return True


def type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a table"})
    return names.get(type(value), type(value).__name__)
