"""Fail closed, lose nothing: what a group enforces when its source fails.

A failing source keeps its last known good entries until they are older than
its `max_stale`, then they expire and the group enforces nothing (its clients
are refused). Without a record on disk (first start, or state lost), the entries
the kernel holds for the group are adopted as last known good from now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from repogate.addresses import NormalisedEntries
from repogate.config import ClientGroup, Config, FileClients, StaticClients
from repogate.model import KernelTable
from repogate.plan import enforced_entries
from repogate.sources import SourceResult
from repogate.state import Record, StateStore

EMPTY = NormalisedEntries(frozenset(), frozenset(), frozenset(), frozenset())


@dataclass(frozen=True)
class Staleness:
    """A group served from last known good: since when, until when, and why."""

    since: float
    expires_at: float
    expired: bool
    reason: str


def fingerprint(group: ClientGroup) -> str:
    """What makes two configs of a group the same source (so its record still applies)."""
    if isinstance(group, FileClients):
        return f"file:{group.path}:{group.format}:{group.json_path or ''}"
    return f"{group.type}:{group.name}"


def resolve(
    config: Config,
    *,
    results: Mapping[str, SourceResult],
    failures: Mapping[str, str],
    store: StateStore | None,
    current: KernelTable | None,
    now: float,
) -> tuple[dict[str, NormalisedEntries], dict[str, Staleness]]:
    """Entries per group, recording successes and serving failures from the record."""
    entries: dict[str, NormalisedEntries] = {}
    stale: dict[str, Staleness] = {}
    for group in config.clients:
        name = group.name
        dynamic = not isinstance(group, StaticClients)
        result = results.get(name)
        if result is not None:
            entries[name] = result.entries
            if dynamic and store is not None:
                store.put(name, Record(fingerprint(group), now, result.origin, result.entries))
            continue
        record = store.get(name, fingerprint(group)) if store is not None else None
        if record is None:
            record = Record(fingerprint(group), now, "kernel", enforced_entries(current, name))
            if store is not None:
                store.put(name, record)
        expires_at = record.fetched_at + config.max_stale(group)
        expired = now >= expires_at
        entries[name] = EMPTY if expired else record.entries
        stale[name] = Staleness(record.fetched_at, expires_at, expired, failures.get(name, ""))
    if store is not None:
        store.retain(
            {group.name for group in config.clients if not isinstance(group, StaticClients)}
        )
    return entries, stale
