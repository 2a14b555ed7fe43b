"""Parse list bodies ("lines" or "json") into raw entries with their locations."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repogate.errors import SourceError


@dataclass(frozen=True)
class RawList:
    items: list[object]
    locate: Callable[[int], str]
    skip_empty: bool = False


def parse_lines(text: str) -> RawList:
    """One address or CIDR per line; `#` starts a comment; blank lines are ignored.

    Blank and comment lines stay in place as empty strings (skipped by the parser),
    so an entry's index is its line number minus one without a lookup table.
    """
    lines = text.splitlines()
    if "#" in text:
        lines = [line.partition("#")[0] if "#" in line else line for line in lines]
    items: list[object] = list(map(str.strip, lines))
    return RawList(items, lambda index: f"line {index + 1}", skip_empty=True)


def parse_json(text: str, json_path: str | None) -> RawList:
    """A JSON list, or a list found under a dotted key path (`data.addresses`)."""
    try:
        document: Any = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"not valid JSON: {exc}") from exc
    where = "$"
    for key in json_path.split(".") if json_path else []:
        if not isinstance(document, dict) or key not in document:
            raise SourceError(f"JSON has no key {key!r} at {where}")
        document = document[key]
        where = f"{where}.{key}"
    if not isinstance(document, list):
        raise SourceError(f"JSON at {where} is not a list")
    items: list[object] = document
    return RawList(items, lambda index: f"{where}[{index}]")


def refuse_if_nothing_valid(where: str, accepted: int, rejected: int, sample: object) -> None:
    """A list in which every entry is rejected is a broken list, not an empty one: the
    group keeps its last known good entries (fail closed) instead of admitting nobody.
    A list that is empty on purpose has no entries to reject, and still applies."""
    if accepted == 0 and rejected > 0:
        raise SourceError(
            f"{where}: no valid entry, all {rejected} rejected (first: {sample}); "
            "keeping the last known good entries"
        )
