"""The live view: what the daemon knows right now, as one JSON-ready document.

The daemon rebuilds it after every reconcile and source refresh and answers
`status` with it from its control socket, so `repogate status`, `status --json`
and the systemd STATUS line all say what the running daemon sees: a failing
source, a held-back shrink, an expired group, a destination NOT GATED. Without
a daemon the CLI builds the same document from state_dir and the kernel, and
says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from repogate.engine import Generation, Outcome

# A source's state, worst last: what `status` prints and alerts key on.
OK, NEVER_FETCHED, FAILING, STALE, HELD, EXPIRED = (
    "ok",
    "never fetched",
    "failing",
    "stale",
    "held back",
    "expired",
)


@dataclass(frozen=True)
class SourceView:
    key: str
    label: str
    kind: str
    state: str
    entries: int = 0
    rejected: int = 0
    rejected_sample: tuple[str, ...] = ()
    error: str = ""
    last_success: float | None = None
    stale_since: float | None = None
    expires_at: float | None = None
    held_previous: int | None = None
    held_proposed: int | None = None
    next_refresh: float | None = None
    origin: str = ""


@dataclass(frozen=True)
class InventoryView:
    """One inventory as its reader last left it: what `status` and the metrics say."""

    name: str
    type: str  # file, http, intune, jamf, fleet
    state: str  # OK, NEVER_FETCHED, FAILING (keeping its last good records), EXPIRED
    records: int = 0
    compliant: int = 0
    rejected: int = 0
    last_success: float | None = None
    error: str = ""
    stale_since: float | None = None
    expires_at: float | None = None  # failing: when its last good records stop counting


@dataclass(frozen=True)
class DestinationView:
    name: str
    addresses: int  # addresses and networks in its sets, both families
    ports: tuple[int, ...]

    @property
    def gated(self) -> bool:
        return self.addresses > 0


@dataclass(frozen=True)
class LiveView:
    table: str
    daemon_pid: int | None  # None: built by the CLI, no daemon runs
    sources: tuple[SourceView, ...]
    destinations: tuple[DestinationView, ...]
    groups: Mapping[str, int]  # entries per client group
    sets: Mapping[str, int]  # elements per set as enforced
    in_sync: bool
    last_reconcile: float | None = None
    last_error: str = ""
    drift_repairs: int = 0
    started_at: float | None = None
    config: str = ""
    notes: tuple[str, ...] = ()
    present: bool = True  # whether the table exists in the kernel
    not_ours: bool = False  # a table by that name exists, but this repogate did not make it
    pending: Mapping[str, int] = field(default_factory=dict)  # elements to add, delete
    inventories: tuple[InventoryView, ...] = ()

    @property
    def not_gated(self) -> list[str]:
        return [d.name for d in self.destinations if not d.gated]

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["not_gated"] = self.not_gated
        document["groups"] = dict(self.groups)
        document["sets"] = dict(self.sets)
        document["pending"] = dict(self.pending)
        return document


def destinations_of(generation: Generation, outcome: Outcome) -> tuple[DestinationView, ...]:
    desired = outcome.desired
    found = []
    for destination in sorted(generation.config.destinations.values(), key=lambda d: d.name):
        size = sum(
            len(spec.elements)
            for spec in desired.sets.values()
            if spec.owner == f"destination {destination.name}"
        )
        found.append(DestinationView(destination.name, size, destination.ports))
    return tuple(found)


def not_gated_warning(names: list[str]) -> str:
    return (
        f"NOT GATED: destination {', '.join(names)} has no addresses, so traffic to it "
        "is not checked at all (its DNS names and IP-range feed have not answered yet)"
    )


def summary(view: LiveView) -> str:
    """The one-line STATUS systemd shows: what is wrong first."""
    parts: list[str] = []
    if view.not_gated:
        parts.append(not_gated_warning(view.not_gated))
    entries = sum(view.groups.values())
    parts.append(
        f"{len(view.groups)} group{'s' if len(view.groups) != 1 else ''}, "
        f"{entries} {'entry' if entries == 1 else 'entries'}"
    )
    for state in (EXPIRED, HELD, STALE, FAILING):
        keys = [s.key for s in view.sources if s.state == state]
        if keys:
            parts.append(f"{state}: {', '.join(keys)}")
    for state in (EXPIRED, FAILING):
        names = [i.name for i in view.inventories if i.state == state]
        if names:
            parts.append(f"inventory {state}: {', '.join(names)}")
    if view.last_error:
        parts.append(f"reconcile failing: {view.last_error}")
    return "; ".join(parts)


def source_from_json(data: Mapping[str, Any]) -> SourceView:
    fields = {k: v for k, v in data.items() if k in SourceView.__dataclass_fields__}
    fields["rejected_sample"] = tuple(fields.get("rejected_sample", ()))
    return SourceView(**fields)


def from_json(data: Mapping[str, Any]) -> LiveView:
    return LiveView(
        table=str(data["table"]),
        daemon_pid=data.get("daemon_pid"),
        sources=tuple(source_from_json(s) for s in data.get("sources", ())),
        destinations=tuple(
            DestinationView(str(d["name"]), int(d["addresses"]), tuple(d.get("ports", ())))
            for d in data.get("destinations", ())
        ),
        groups={str(k): int(v) for k, v in data.get("groups", {}).items()},
        sets={str(k): int(v) for k, v in data.get("sets", {}).items()},
        in_sync=bool(data.get("in_sync")),
        last_reconcile=data.get("last_reconcile"),
        last_error=str(data.get("last_error", "")),
        drift_repairs=int(data.get("drift_repairs", 0)),
        started_at=data.get("started_at"),
        config=str(data.get("config", "")),
        notes=tuple(data.get("notes", ())),
        present=bool(data.get("present", True)),
        not_ours=bool(data.get("not_ours", False)),
        inventories=tuple(
            InventoryView(**{k: v for k, v in i.items() if k in InventoryView.__dataclass_fields__})
            for i in data.get("inventories", ())
        ),
    )


def _served(outcome: Outcome, key: str) -> str:
    """What a source without a result serves: "kernel", "snapshot <date>", "nothing"..."""
    fallback = outcome.fallbacks.get(key)
    return fallback.origin if fallback is not None else ""


def source_views(
    generation: Generation,
    outcome: Outcome,
    *,
    results: Mapping[str, Any],
    failures: Mapping[str, str],
    last_success: Mapping[str, float],
    next_refresh: Mapping[str, float] | None = None,
) -> tuple[SourceView, ...]:
    """Each dynamic source's state, from what it last said and what lastgood made of it.

    `last_success` holds only real fetches (never an adoption of the kernel's
    entries or the preset's snapshot), so a source that never answered says so.
    """
    views = []
    for spec in generation.specs:
        if not spec.dynamic:
            continue
        result = results.get(spec.key)
        failure = failures.get(spec.key, "")
        stale = outcome.stale.get(spec.key)
        hold = outcome.held.get(spec.key)
        succeeded = last_success.get(spec.key)
        if hold is not None:
            state = HELD
        elif stale is not None and stale.expired:
            state = EXPIRED
        elif result is not None:
            state = OK
        elif succeeded is None:
            state = NEVER_FETCHED
        elif failure:
            state = STALE
        else:
            state = OK  # fetched before, unchanged since (the daemon's first moments)
        size = outcome.desired.groups.get(spec.group) if spec.group is not None else None
        entries = len(size) if size is not None else (len(result.entries) if result else 0)
        views.append(
            SourceView(
                key=spec.key,
                label=spec.label,
                kind=spec.kind,
                state=state,
                entries=entries,
                rejected=result.rejected_count if result else 0,
                rejected_sample=tuple(str(r) for r in result.rejected_sample[:3]) if result else (),
                error=failure or (stale.reason if stale is not None and state != OK else ""),
                last_success=succeeded,
                stale_since=hold.since if hold else (stale.since if stale else None),
                expires_at=stale.expires_at if stale is not None else None,
                held_previous=hold.previous if hold else None,
                held_proposed=hold.proposed if hold else None,
                next_refresh=(next_refresh or {}).get(spec.key),
                origin=result.origin if result else _served(outcome, spec.key),
            )
        )
    return tuple(views)
