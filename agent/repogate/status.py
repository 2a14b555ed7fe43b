"""What is enforced right now: sets, client groups and counters as the kernel holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from repogate.addresses import element_order
from repogate.config import Config
from repogate.nft import names
from repogate.plan import FAMILIES, diff
from repogate.reconcile import Gathered

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
class Status:
    table: str
    present: bool
    in_sync: bool
    sets: tuple[SetStatus, ...] = ()
    groups: tuple[GroupStatus, ...] = ()
    counters: tuple[CounterStatus, ...] = ()
    pending: dict[str, int] = field(default_factory=dict)

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
            "counters": {
                c.destination: {
                    "allowed": {"packets": c.allowed_packets, "bytes": c.allowed_bytes},
                    "denied": {"packets": c.denied_packets, "bytes": c.denied_bytes},
                }
                for c in self.counters
            },
        }


def collect_status(config: Config, gathered: Gathered) -> Status:
    desired = gathered.desired
    current = gathered.current
    plan = diff(desired, current)
    pending = {"add": plan.elements_added, "delete": plan.elements_deleted}
    if current is None:
        return Status(desired.table, False, False, pending=pending)
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
    return Status(desired.table, True, plan.is_empty, sets, tuple(groups), tuple(counters), pending)


def format_status(status: Status, sample: int = 10) -> list[str]:
    if not status.present:
        return [f"table inet {status.table}: not present (run `repogate sync`)"]
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
    lines += ["", "traffic (since the table was created):"]
    for c in status.counters:
        lines.append(
            f"  {c.destination}: allowed {c.allowed_packets} packets / {c.allowed_bytes} bytes, "
            f"denied {c.denied_packets} packets / {c.denied_bytes} bytes"
        )
    return lines
