"""`repogate status` as text: the live view (the daemon's, or one the CLI built)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from repogate.egress import EgressReport
from repogate.egress import describe as describe_egress
from repogate.lastgood import KERNEL, NOTHING
from repogate.live import (
    EXPIRED,
    FAILING,
    HELD,
    NEVER_FETCHED,
    OK,
    STALE,
    InventoryView,
    LiveView,
    SourceView,
)
from repogate.report import plural


def format_status(
    view: LiveView,
    counters: Mapping[str, Any],
    egress: Sequence[tuple[str, str]] = (),
    report: EgressReport | None = None,
) -> list[str]:
    if view.daemon_pid is not None:
        since = _when(view.started_at) if view.started_at else "?"
        head = [f"daemon: running (pid {view.daemon_pid}, since {since}), config {view.config}"]
    else:
        head = [
            "daemon: none runs on this table; what follows is what the kernel and "
            "state_dir hold (network sources are not fetched by status)"
        ]
    lines = [f"table inet {view.table}: {_table_state(view)}", *head]
    lines += [f"  {note}" for note in view.notes]
    if view.last_error:
        lines.append(f"  reconcile failing: {view.last_error}")
    lines += ["", "destinations:"]
    for destination in view.destinations:
        ports = ", ".join(map(str, destination.ports))
        if destination.gated:
            count = plural(destination.addresses, "address or network", "addresses or networks")
            lines.append(f"  {destination.name}: gated on TCP {ports} ({count})")
        else:
            lines.append(
                f"  {destination.name}: NOT GATED: no addresses, so traffic to it on TCP "
                f"{ports} is not checked at all"
            )
    lines += ["", "client groups:"]
    for group, size in sorted(view.groups.items()):
        lines.append(f"  {group}: {plural(size, 'entry', 'entries')}")
    if view.sources:
        lines += ["", "sources:"]
        lines += [f"  {_source_line(source)}" for source in view.sources]
    if view.inventories:
        lines += ["", "inventories:"]
        lines += [f"  {_inventory_line(inventory)}" for inventory in view.inventories]
    lines += ["", "sets:"]
    width = max((len(name) for name in view.sets), default=10)
    for name, size in sorted(view.sets.items()):
        lines.append(f"  {name:<{width}}  {size:>8} elements")
    lines += ["", "egress (the address Bitbucket sees):", *_egress_lines(egress, report)]
    lines += ["", "traffic (since the table was created):"]
    lines += _traffic(counters)
    return lines


def _table_state(view: LiveView) -> str:
    if view.not_ours:
        return "present but NOT this repogate's (see below)"
    if not view.present:
        return "not present (run `repogate sync`)"
    if view.in_sync:
        return "in sync"
    pending = view.pending
    return f"out of sync: {pending.get('add', 0)} to add, {pending.get('delete', 0)} to delete"


# What a never-fetched source serves, by lastgood.Staleness.origin; a snapshot reads
# "serving the snapshot 2026-10-09" through the default.
NEVER_FETCHED_SERVING = {
    KERNEL: "serving the entries the kernel enforced (adopted, never fetched)",
    NOTHING: "serving nothing",
    "": "serving nothing yet",
}


def _source_line(source: SourceView) -> str:
    head = f"{source.label}"
    if source.state == OK:
        text = f"{head}: ok, {plural(source.entries, 'entry', 'entries')}"
        if source.rejected:
            sample = "; ".join(source.rejected_sample)
            text += f", {plural(source.rejected, 'entry', 'entries')} rejected ({sample})"
        return text + (
            f"; last success {_when(source.last_success)}" if source.last_success else ""
        )
    if source.state == HELD:
        return (
            f"{head}: HELD BACK since {_when(source.stale_since)}: it shrank from "
            f"{source.held_previous} to {source.held_proposed} entries, more than max_shrink; "
            "the previous entries stay enforced until a refresh agrees, or "
            "`repogate sync --accept-shrink`"
        )
    if source.state == EXPIRED:
        return (
            f"{head}: EXPIRED at {_when(source.expires_at)}: its last known good entries "
            f"are past max_stale, the group admits nobody ({source.error})"
        )
    if source.state == NEVER_FETCHED:
        why = f": {source.error}" if source.error else ""
        serving = NEVER_FETCHED_SERVING.get(source.origin, f"serving the {source.origin}")
        return f"{head}: never fetched successfully{why}; {serving}"
    if source.state in (STALE, FAILING):
        until = _when(source.expires_at) if source.expires_at is not None else "it recovers"
        return (
            f"{head}: FAILING ({source.error}); serving its last known good entries from "
            f"{_when(source.last_success)} until {until}"
        )
    return f"{head}: {source.state}"


def _egress_lines(egress: Sequence[tuple[str, str]], report: EgressReport | None) -> list[str]:
    lines = [f"  {line}" for line in describe_egress(report)] if report is not None else []
    if report is None:
        lines.append("  cannot read routes here")
    lines.append("  egress interfaces' addresses:" if egress else "  egress interfaces: none found")
    return lines + [f"    {i} {a}" for i, a in egress]


def _inventory_line(inventory: InventoryView) -> str:
    head = f"{inventory.name} ({inventory.type})"
    counts = (
        f"{plural(inventory.records, 'device record')}, {inventory.compliant} compliant and fresh"
    )
    if inventory.rejected:
        counts += f", {plural(inventory.rejected, 'record')} rejected"
    if inventory.state == OK:
        return f"{head}: ok, {counts}; read {_when(inventory.last_success)}"
    if inventory.state == NEVER_FETCHED:
        return f"{head}: not read yet"
    if inventory.state == EXPIRED:
        return (
            f"{head}: EXPIRED since {_when(inventory.expires_at)}: failing since "
            f"{_when(inventory.stale_since)} and its last good records are past max_stale, "
            f"so every device is refused ({inventory.error})"
        )
    if inventory.last_success is None:
        return f"{head}: FAILING, never read: every device is refused ({inventory.error})"
    return (
        f"{head}: FAILING since {_when(inventory.stale_since)} ({inventory.error}); judging by "
        f"its last good records ({counts}) from {_when(inventory.last_success)} until "
        f"{_when(inventory.expires_at)}"
    )


def _traffic(counters: Mapping[str, Any]) -> list[str]:
    if "error" in counters:
        return [f"  cannot read: {counters['error']}"]
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for name, value in counters.items():
        verdict, _, destination = name.partition("_")
        if verdict in ("allowed", "denied") and destination:
            found.setdefault(destination, {})[verdict] = (int(value[0]), int(value[1]))
    lines = []
    for destination, verdicts in sorted(found.items()):
        allowed = verdicts.get("allowed", (0, 0))
        denied = verdicts.get("denied", (0, 0))
        lines.append(
            f"  {destination}: allowed {allowed[0]} packets / {allowed[1]} bytes, "
            f"denied {denied[0]} packets / {denied[1]} bytes"
        )
    return lines or ["  no counters"]


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
