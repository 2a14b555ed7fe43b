"""Reading a systemd unit file the way the tests need it: repeated keys kept in order."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "repogate.service"

# systemd-analyze prints plain text (no colours, no pager) when told so.
QUIET_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value in order (systemd keys may repeat; '' resets)."""
    sections: Unit = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def words(section: dict[str, list[str]], key: str) -> list[str]:
    return [word for value in section.get(key, []) for word in value.split()]


def is_true(section: dict[str, list[str]], key: str) -> bool:
    values = section.get(key, [])
    return bool(values) and values[-1].lower() in {"yes", "true", "on", "1"}
