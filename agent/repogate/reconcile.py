"""One reconcile: desired state from config, diff against the kernel, one transaction."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from repogate.addresses import element_order
from repogate.config import Config
from repogate.errors import NotOwnedTableError
from repogate.lastgood import ShrinkHold, Staleness, resolve
from repogate.model import DesiredState, KernelTable, Plan
from repogate.nft import names
from repogate.nft.backend import Backend
from repogate.nft.builders import Json, build_plan
from repogate.plan import desired_state, diff
from repogate.sources import Collected, SourceSpec, collect, specs
from repogate.state import StateStore

SAMPLE = 5


@dataclass(frozen=True)
class Gathered:
    """Desired state plus what each source said, computed against the current kernel."""

    desired: DesiredState
    collected: Collected
    current: KernelTable | None
    stale: Mapping[str, Staleness] = field(default_factory=dict)
    held: Mapping[str, ShrinkHold] = field(default_factory=dict)
    last_good: Mapping[str, float] = field(default_factory=dict)  # source key -> fetched at


@dataclass(frozen=True)
class SyncResult:
    gathered: Gathered
    plan: Plan
    commands: list[Json]
    applied: bool
    seconds: float

    @property
    def desired(self) -> DesiredState:
        return self.gathered.desired

    @property
    def failures(self) -> Mapping[str, str]:
        return self.gathered.collected.failures


def check_owned(current: KernelTable | None) -> None:
    """Refuse to manage a same-named table that repogate did not create."""
    if current is not None and not current.is_empty and names.GATE_CHAIN not in current.chains:
        raise NotOwnedTableError(
            f"table inet {current.name} exists but was not created by repogate "
            f"(it has no '{names.GATE_CHAIN}' chain); choose another agent.table "
            "or remove it yourself"
        )


def gather(
    config: Config,
    current: KernelTable | None,
    store: StateStore | None = None,
    now: float | None = None,
    *,
    accept_shrink: bool = False,
    network: bool = True,
) -> Gathered:
    """Fetch every source; a failed one is served from its last known good entries.

    network=False reads local sources only and serves the others from state.
    """
    collected = collect(config, network=network)
    resolved = resolve(
        config,
        results=collected.results,
        failures=collected.failures,
        store=store,
        current=current,
        now=time.time() if now is None else now,
        accept_shrink=accept_shrink,
    )
    desired = desired_state(config, resolved.groups, resolved.destinations)
    last_good = {key: record.fetched_at for key, record in (store.records if store else {}).items()}
    return Gathered(desired, collected, current, resolved.stale, resolved.held, last_good)


def sync(
    config: Config,
    backend: Backend,
    *,
    dry_run: bool = False,
    store: StateStore | None = None,
    accept_shrink: bool = False,
    meanwhile: Callable[[Plan, DesiredState], None] | None = None,
) -> SyncResult:
    """One sync. `meanwhile(plan, desired)` runs in a thread while the kernel commits
    (libnftables releases the GIL), so writing state and preparing the audit lines
    costs no wall time."""
    current = backend.read_table(config.agent.table)
    check_owned(current)
    gathered = gather(config, current, store, accept_shrink=accept_shrink)
    plan = diff(gathered.desired, current)
    commands = build_plan(plan, gathered.desired)
    if dry_run or plan.is_empty:
        return SyncResult(gathered, plan, commands, False, 0.0)
    worker: threading.Thread | None = None
    failure: list[BaseException] = []
    if meanwhile is not None:

        def run() -> None:
            try:
                meanwhile(plan, gathered.desired)
            except BaseException as exc:  # re-raised below, in the caller's thread
                failure.append(exc)

        worker = threading.Thread(target=run, name="sync-meanwhile")
        worker.start()
    try:
        seconds = backend.apply(commands)
    finally:
        if worker is not None:
            worker.join()
    if failure:
        raise failure[0]
    return SyncResult(gathered, plan, commands, True, seconds)


def describe_sources(
    config: Config,
    collected: Collected,
    stale: Mapping[str, Staleness] | None = None,
    held: Mapping[str, ShrinkHold] | None = None,
) -> list[str]:
    """One line per source that is not plain static config: size, rejects, failures."""
    lines: list[str] = []
    for spec in specs(config):
        result = collected.results.get(spec.key)
        failure = collected.failures.get(spec.key)
        hold = (held or {}).get(spec.key)
        if failure is not None:
            lines.append(f"{spec.label} ({spec.kind}): FAILED: {failure}; {_keeping(spec, stale)}")
        elif hold is not None:
            lines.append(
                f"{spec.label} ({spec.kind}): HELD BACK: it shrank from {hold.previous} to "
                f"{hold.proposed} entries, more than max_shrink; the previous entries stay "
                "until the next refresh agrees or `repogate sync --accept-shrink`"
            )
        elif result is not None and (spec.dynamic or result.rejected_count):
            line = f"{spec.label} ({spec.kind} {result.origin}): {result.accepted} entries"
            if result.rejected_count:
                sample = "; ".join(str(r) for r in result.rejected_sample[:3])
                line += f", {result.rejected_count} rejected ({sample})"
            lines.append(line)
    return lines


def _keeping(spec: SourceSpec, stale: Mapping[str, Staleness] | None) -> str:
    info = (stale or {}).get(spec.key)
    if info is None:
        return "keeping the entries enforced now"
    if info.expires_at is None:
        return f"keeping its last known good entries from {_when(info.since)}"
    if info.expired:
        return (
            f"its last known good entries from {_when(info.since)} EXPIRED at "
            f"{_when(info.expires_at)}: the group admits nobody"
        )
    return (
        f"keeping its last known good entries from {_when(info.since)} "
        f"until {_when(info.expires_at)}"
    )


def describe(plan: Plan, table: str) -> list[str]:
    """Human lines for what a plan changes, with a sample of the elements."""
    if plan.is_empty:
        return [f"table inet {table}: in sync, no changes"]
    lines: list[str] = []
    if plan.create_table:
        lines.append(f"table inet {table}: create")
    # In the order the transaction runs them: removals first.
    lines += [
        f"delete {kind} {name} (not created by repogate)" for kind, name in plan.delete_others
    ]
    for label, items in (
        ("delete chain", plan.delete_chains),
        ("delete set", plan.delete_sets),
        ("delete counter", plan.delete_counters),
        ("create counter", plan.add_counters),
        ("create set", plan.add_sets),
        ("create chain", plan.add_chains),
    ):
        lines += [f"{label} {name}" for name in items]
    if plan.rewrite_rules:
        lines.append("rules: rewrite")
    for change in plan.set_changes:
        how = " (refill in one transaction)" if change.replace else ""
        parts = []
        if change.add:
            parts.append(f"+{len(change.add)} {_sample(change.add, '+')}")
        if change.delete:
            parts.append(f"-{len(change.delete)} {_sample(change.delete, '-')}")
        lines.append(f"set {change.name}: {'; '.join(parts)}{how}")
    return lines


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))


def _sample(elements: frozenset[str], sign: str) -> str:
    # The lowest few read best; past a thousand, any few will do and cost nothing.
    if len(elements) <= 1000:
        shown = heapq.nsmallest(SAMPLE, elements, key=element_order)
    else:
        shown = sorted(itertools.islice(elements, SAMPLE), key=element_order)
    more = f" … {len(elements) - SAMPLE} more" if len(elements) > SAMPLE else ""
    return "[" + " ".join(f"{sign}{element}" for element in shown) + more + "]"
