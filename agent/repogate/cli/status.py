"""What is enforced right now: sets, client groups and counters as the kernel holds them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from repogate.addresses import element_order
from repogate.config import Config
from repogate.nft import names
from repogate.plan import FAMILIES, diff
from repogate.reconcile import Gathered
from repogate.sources import specs

KINDS = ("addr", "net")


@dataclass(frozen=True)
class SetStatus:
    name: str
    elements: int
    desired: int


@dataclass(frozen=True)
class GroupStatus:
    name: str
    entries: tuple[str, ...]


@dataclass(frozen=True)
class CounterStatus:
    destination: str
    allowed_packets: int
    allowed_bytes: int
    denied_packets: int
    denied_bytes: int


@dataclass(frozen=True)
class SourceStatus:
    """A dynamic group's source: fresh, or serving last known good since when."""

    group: str
    kind: str
    ok: bool
    error: str = ""
    stale_since: float | None = None
    expires_at: float | None = None
    expired: bool = False
    rejected: int = 0
    held: str = ""  # "previous -> proposed" while a shrink is held back
    entries: int = 0


@dataclass(frozen=True)
class Status:
    table: str
    present: bool
    in_sync: bool
    sets: tuple[SetStatus, ...] = ()
    groups: tuple[GroupStatus, ...] = ()
    counters: tuple[CounterStatus, ...] = ()
    pending: dict[str, int] = field(default_factory=dict)
    sources: tuple[SourceStatus, ...] = ()
    egress: tuple[tuple[str, str], ...] = ()  # (interface, address)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "present": self.present,
            "in_sync": self.in_sync,
            "pending": self.pending,
            "sets": {s.name: {"elements": s.elements, "desired": s.desired} for s in self.sets},
            "groups": {
                g.name: {"count": len(g.entries), "entries": list(g.entries)} for g in self.groups
            },
            "sources": {
                src.group: {
                    "type": src.kind,
                    "ok": src.ok,
                    "error": src.error,
                    "stale_since": src.stale_since,
                    "expires_at": src.expires_at,
                    "expired": src.expired,
                    "rejected": src.rejected,
                    "entries": src.entries,
                    "held_back": src.held or None,
                }
                for src in self.sources
            },
            "egress_addresses": [{"interface": i, "address": a} for i, a in self.egress],
            "counters": {
                c.destination: {
                    "allowed": {"packets": c.allowed_packets, "bytes": c.allowed_bytes},
                    "denied": {"packets": c.denied_packets, "bytes": c.denied_bytes},
                }
                for c in self.counters
            },
        }


def collect_status(
    config: Config, gathered: Gathered, egress: tuple[tuple[str, str], ...] = ()
) -> Status:
    desired = gathered.desired
    current = gathered.current
    plan = diff(desired, current)
    pending = {"add": plan.elements_added, "delete": plan.elements_deleted}
    sources = _sources(config, gathered)
    if current is None:
        return Status(desired.table, False, False, pending=pending, sources=sources, egress=egress)
    set_names = sorted(set(current.sets) | set(desired.sets))
    sets = tuple(
        SetStatus(
            name,
            len(current.sets[name].elements) if name in current.sets else 0,
            len(desired.sets[name].elements) if name in desired.sets else 0,
        )
        for name in set_names
    )
    groups = []
    for group in config.clients:
        held: set[str] = set()
        for family in FAMILIES:
            for kind in KINDS:
                kernel_set = current.sets.get(names.client_set(group.name, family, kind))  # type: ignore[arg-type]
                if kernel_set is not None:
                    held |= kernel_set.elements
        groups.append(GroupStatus(group.name, tuple(sorted(held, key=element_order))))
    counters = []
    for destination in sorted(config.destinations):
        allowed = current.counters.get(names.counter(destination, "allowed"))
        denied = current.counters.get(names.counter(destination, "denied"))
        counters.append(
            CounterStatus(
                destination,
                allowed.packets if allowed else 0,
                allowed.bytes if allowed else 0,
                denied.packets if denied else 0,
                denied.bytes if denied else 0,
            )
        )
    return Status(
        desired.table,
        True,
        plan.is_empty,
        sets,
        tuple(groups),
        tuple(counters),
        pending,
        sources,
        egress,
    )


def _sources(config: Config, gathered: Gathered) -> tuple[SourceStatus, ...]:
    found = []
    for spec in specs(config):
        if not spec.dynamic:
            continue
        result = gathered.collected.results.get(spec.key)
        stale = gathered.stale.get(spec.key)
        hold = gathered.held.get(spec.key)
        error = gathered.collected.failures.get(spec.key, "")
        if result is None and not error and stale is None:
            fetched = gathered.last_good.get(spec.key)
            when = _when(fetched) if fetched is not None else "never"
            error = f"network source, not fetched by status; last good fetch: {when}"
        found.append(
            SourceStatus(
                group=spec.key,
                kind=spec.kind,
                ok=result is not None,
                error=error,
                stale_since=stale.since if stale else None,
                expires_at=stale.expires_at if stale else None,
                expired=stale.expired if stale else False,
                rejected=result.rejected_count if result else 0,
                held=f"{hold.previous} -> {hold.proposed}" if hold else "",
                entries=len(result.entries) if result else 0,
            )
        )
    return tuple(found)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def format_status(status: Status, sample: int = 10) -> list[str]:
    if not status.present:
        lines = [f"table inet {status.table}: not present (run `repogate sync`)"]
        return lines + _format_sources_and_egress(status)
    state = (
        "in sync"
        if status.in_sync
        else (f"out of sync: {status.pending['add']} to add, {status.pending['delete']} to delete")
    )
    lines = [f"table inet {status.table}: {state}", "", "sets:"]
    width = max((len(s.name) for s in status.sets), default=10)
    for s in status.sets:
        note = "" if s.elements == s.desired else f"  (config wants {s.desired})"
        lines.append(f"  {s.name:<{width}}  {s.elements:>8} elements{note}")
    lines += ["", "client groups:"]
    for g in status.groups:
        shown = " ".join(g.entries[:sample])
        more = f" … and {len(g.entries) - sample} more" if len(g.entries) > sample else ""
        lines.append(f"  {g.name}: {len(g.entries)} entries: {shown}{more}")
    lines += _format_sources_and_egress(status)
    lines += ["", "traffic (since the table was created):"]
    for c in status.counters:
        lines.append(
            f"  {c.destination}: allowed {c.allowed_packets} packets / {c.allowed_bytes} bytes, "
            f"denied {c.denied_packets} packets / {c.denied_bytes} bytes"
        )
    return lines


def _format_sources_and_egress(status: Status) -> list[str]:
    lines: list[str] = []
    if status.sources:
        lines += ["", "sources:"]
        for src in status.sources:
            if src.ok and src.held:
                lines.append(
                    f"  {src.group} ({src.kind}): HELD BACK (shrank {src.held} entries, "
                    "more than max_shrink): `repogate sync --accept-shrink` to apply"
                )
            elif src.ok:
                note = f", {src.rejected} entries rejected" if src.rejected else ""
                lines.append(f"  {src.group} ({src.kind}): ok, {src.entries} entries{note}")
            elif src.stale_since is None:
                lines.append(f"  {src.group} ({src.kind}): {src.error}")
            else:
                since = _when(src.stale_since)
                until = _when(src.expires_at) if src.expires_at is not None else "it recovers"
                state = (
                    f"EXPIRED at {until}: admits nobody"
                    if src.expired
                    else f"STALE since {since}, serving last known good until {until}"
                )
                lines.append(f"  {src.group} ({src.kind}): {state} ({src.error})")
    lines += ["", "egress addresses (Bitbucket's IP allowlist must contain these):"]
    lines += [f"  {i} {a}" for i, a in status.egress] or ["  none found"]
    return lines
