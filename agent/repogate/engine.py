"""The one reconcile path, used by `repogate sync` and by the daemon alike.

A reconcile takes one immutable `Generation` (a config and the sources it needs)
and what those sources last said, and then:

1. makes sure the table is this instance's (its owner mark, see `instance.py`),
   re-reading the kernel when asked to verify or when its model is unknown;
2. resolves last known good, expiry and shrink holds (`lastgood.resolve`);
3. plans the minimal diff against the model of the table and applies it as one
   libnftables transaction, a rename of `agent.table` included (the old table is
   deleted in the same transaction, so no client is refused or admitted by the
   wrong table even for a moment);
4. commits the model, the state file and the audit trail.

The rules about ownership, renames, holds and staleness live here and in
lastgood, nowhere else. The engine keeps a model of the owned table (read once,
then updated from each committed transaction), so a reconcile costs the change
rather than a re-read of every element; a verify re-reads it and reports what
changed behind repogate's back as drift.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from repogate.addresses import element_order
from repogate.audit import AuditLog
from repogate.config import Config
from repogate.errors import NftError, NotOwnedTableError
from repogate.instance import Instance
from repogate.lastgood import ShrinkHold, Staleness, resolve
from repogate.model import DesiredState, KernelTable, Plan
from repogate.nft import names
from repogate.nft.backend import Backend
from repogate.nft.builders import Json, build_delete_table, build_plan
from repogate.plan import desired_state, diff, expected_table
from repogate.sources import SourceResult, SourceSpec, specs
from repogate.state import StateStore

log = logging.getLogger("repogate")


@dataclass(frozen=True)
class Generation:
    """A config and the sources it needs, swapped as one: a reconcile never sees a
    new config with the old sources (or the reverse)."""

    config: Config
    specs: tuple[SourceSpec, ...]

    @classmethod
    def of(cls, config: Config) -> Generation:
        return cls(config, tuple(specs(config)))

    @property
    def table(self) -> str:
        return self.config.agent.table


@dataclass(frozen=True)
class Inputs:
    """What the sources said: results by source key, and failures (key -> reason)."""

    results: Mapping[str, SourceResult] = field(default_factory=dict)
    failures: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    desired: DesiredState
    plan: Plan
    commands: list[Json]
    applied: bool
    seconds: float
    stale: Mapping[str, Staleness] = field(default_factory=dict)
    held: Mapping[str, ShrinkHold] = field(default_factory=dict)
    drift: tuple[str, ...] = ()  # what a verify found changed behind repogate's back
    moved_from: str | None = None  # the table renamed away from (agent.table changed)
    adopted: tuple[str, ...] = ()  # foreign objects of a table taken over (--adopt)
    # Every source without a result this round and what it is served from (stale ⊆ this).
    fallbacks: Mapping[str, Staleness] = field(default_factory=dict)


class Engine:
    """The owned table's keeper: one reconcile at a time (`lock`)."""

    def __init__(
        self,
        backend: Backend,
        store: StateStore,
        audit: AuditLog,
        instance: Instance,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.store = store
        self.audit = audit
        self.instance = instance
        self.clock = clock
        self.lock = threading.Lock()
        self.model: KernelTable | None = None
        self.model_known = False
        self.last_applied: DesiredState | None = None
        # Set by the daemon: state is then written by its own thread, off the reconcile
        # path (a 100,000-entry state file costs ~20 ms to write and fsync).
        self.state_changed: Callable[[], None] | None = None

    @property
    def owner_mark(self) -> str:
        return names.owner_comment(self.instance.id)

    def forget(self) -> None:
        """Distrust the model: the next reconcile re-reads the kernel first."""
        with self.lock:
            self.model_known = False

    def reconcile(
        self,
        generation: Generation,
        inputs: Inputs,
        *,
        reason: str,
        verify: bool = False,
        dry_run: bool = False,
        accept_shrink: bool = False,
        adopt: bool = False,
    ) -> Outcome:
        with self.lock:
            config = generation.config
            table = generation.table
            drift, adopted = self._refresh_model(table, verify=verify, adopt=adopt)
            moved_from = self._moved_from(table)
            store = self.store if not dry_run else _scratch_copy(self.store)
            resolved = resolve(
                config,
                results=inputs.results,
                failures=inputs.failures,
                store=store,
                current=self.model,
                now=self.clock(),
                accept_shrink=accept_shrink,
                source_specs=generation.specs,
            )
            desired = desired_state(
                config, resolved.groups, resolved.destinations, owner=self.owner_mark
            )
            plan = diff(desired, self.model)
            commands = build_plan(plan, desired)
            if moved_from is not None:
                commands += build_delete_table(moved_from)

            def outcome(applied: bool, seconds: float, plan: Plan = plan) -> Outcome:
                return Outcome(
                    desired,
                    plan,
                    commands,
                    applied,
                    seconds,
                    resolved.stale,
                    resolved.held,
                    drift,
                    moved_from if applied else None,
                    adopted,
                    resolved.fallbacks,
                )

            if dry_run:
                return outcome(False, 0.0)
            if not commands:
                self.last_applied = desired
                self._remember_table(table)
                self._state_changed()
                return outcome(False, 0.0)
            started = time.perf_counter()
            plan, commands = self._apply(commands, plan, desired, moved_from, adopt=adopt)
            seconds = time.perf_counter() - started
            self.model = expected_table(desired)
            self.last_applied = desired
            self._remember_table(table)
            self._state_changed()
            devices = {
                a: d for result in inputs.results.values() for a, d in result.devices.items()
            }
            self.audit.record(plan, desired, reason, devices)
            if moved_from is not None:
                self.audit.record_event(moved_from, "table deleted (agent.table renamed)", reason)
            return outcome(True, seconds, plan)

    def _refresh_model(
        self, table: str, *, verify: bool, adopt: bool
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Re-read the table when asked, unknown or renamed; (drift found, objects adopted)."""
        stale_name = self.model is not None and self.model.name != table
        if not (verify or not self.model_known or stale_name):
            return (), ()
        fresh = self.backend.read_table(table)
        adopted = self.check_owned(fresh, adopt=adopt)
        last = self.last_applied
        drift: tuple[str, ...] = ()
        if last is not None and last.table == table and self.model_known:
            drift = _drift(last, fresh)
        self.model, self.model_known = fresh, True
        return drift, adopted

    def _apply(
        self,
        commands: list[Json],
        plan: Plan,
        desired: DesiredState,
        moved_from: str | None,
        *,
        adopt: bool,
    ) -> tuple[Plan, list[Json]]:
        """One transaction; return the plan and commands that were applied.

        A refusal means the model was wrong (the table changed since it was read): the
        kernel is read and the plan made again against what it really holds, once;
        after a second refusal the model is no longer trusted.
        """
        try:
            self.backend.apply(commands)
            return plan, commands
        except NftError as first:
            log.warning("transaction refused (%s); re-reading the table and retrying", first)
        try:
            fresh = self.backend.read_table(desired.table)
            self.check_owned(fresh, adopt=adopt)
            plan = diff(desired, fresh)
            commands = build_plan(plan, desired)
            if moved_from is not None:
                commands += build_delete_table(moved_from)
            self.backend.apply(commands)
        except NftError:
            self.model_known = False
            raise
        return plan, commands

    def delete_table(self, table: str, reason: str) -> bool:
        """Delete the owned table (teardown, on_stop = remove); False if it was not there.
        A table that is not this instance's is refused, never deleted."""
        with self.lock:
            current = self.backend.read_table(table)
            if current is None:
                return False
            self.check_owned(current)
            self.backend.apply(build_delete_table(table))
            self.model, self.model_known = None, True
        self.audit.record_event(table, "table deleted", reason)
        return True

    def _state_changed(self) -> None:
        if self.state_changed is not None:
            self.state_changed()
        else:
            self.save_state()

    def save_state(self, *, force: bool = False) -> None:
        """Last known good entries to disk: at once when they changed, else when due."""
        before = self.store.save_error
        try:
            if force:
                self.store.save()
            else:
                self.store.save_if_due(self.clock())
        except OSError as exc:
            if self.store.save_error != before:  # said once: a failed save is retried
                log.warning("could not save state in %s: %s", self.store.path, exc.strerror or exc)

    def check_owned(self, current: KernelTable | None, *, adopt: bool = False) -> tuple[str, ...]:
        """Refuse a table this instance did not create; return what `adopt` took over.

        Proof is the owner mark repogate writes itself, never a name anyone can
        create. An empty table is taken over quietly; with `adopt`, any table is.
        """
        if current is None or current.is_empty:
            return ()
        mark = names.owner_id(current.owner)
        if mark == self.instance.id:
            return ()
        objects = describe_objects(current)
        if adopt:
            log.warning(
                "taking over table inet %s (--adopt): %s",
                current.name,
                ", ".join(objects) or "empty",
            )
            return tuple(objects)
        if mark is not None:
            raise NotOwnedTableError(
                f"table inet {current.name} carries the mark of another repogate instance "
                f"({mark}; this one is {self.instance.id}, in {self.instance.path}). Two "
                "instances on one table undo each other's changes. If that instance is "
                "gone (its state_dir was replaced), take the table over with "
                "`repogate sync --adopt`"
            )
        raise NotOwnedTableError(
            f"table inet {current.name} exists but repogate did not create it (it has no "
            f"owner mark); it holds {', '.join(objects)}. Choose another agent.table, "
            "remove that table yourself, or take it over with `repogate sync --adopt` "
            "(its contents are replaced; tables made by repogate before 0.3 need this once)"
        )

    def _moved_from(self, table: str) -> str | None:
        """The table this instance enforced before agent.table changed, if it is still
        there and still carries this instance's mark."""
        previous = self.instance.table
        if previous is None or previous == table:
            return None
        old = self.backend.read_table(previous)
        if old is None:
            return None
        if names.owner_id(old.owner) != self.instance.id:
            log.warning(
                "agent.table changed from %s, but table inet %s is not this instance's "
                "(no matching owner mark): leaving it alone",
                previous,
                previous,
            )
            return None
        return previous

    def _remember_table(self, table: str) -> None:
        if self.instance.table == table:
            return
        self.instance.table = table
        try:
            self.instance.save()
        except OSError as exc:
            log.warning("cannot save %s: %s", self.instance.path, exc)


def describe_objects(table: KernelTable) -> list[str]:
    """Every object of a table, in an admin's words (for refusals and take-overs)."""
    found = [f"chain {name}" for name in sorted(table.chains)]
    found += [f"set {name}" for name in sorted(table.sets)]
    found += [f"counter {name}" for name in sorted(table.counters)]
    found += [f"{kind} {name}" for kind, name in table.others]
    return found


def _drift(last: DesiredState, fresh: KernelTable | None) -> tuple[str, ...]:
    if fresh is None:
        return (f"table inet {last.table} was deleted",)
    drifted = diff(last, fresh)
    return () if drifted.is_empty else describe_drift(drifted)


def describe_drift(drifted: Plan) -> tuple[str, ...]:
    """What changed behind repogate's back, in an admin's words.

    `drifted` is the plan that would turn the kernel back into what was last
    applied: what it would add is missing, what it would delete is foreign.
    """
    found: list[str] = []
    found += [f"foreign {kind} {name}" for kind, name in drifted.delete_others]
    found += [f"chain {name} missing" for name in drifted.add_chains]
    found += [f"foreign chain {name}" for name in drifted.delete_chains]
    found += [f"set {name} missing" for name in drifted.add_sets]
    found += [f"foreign set {name}" for name in drifted.delete_sets]
    found += [f"counter {name} missing" for name in drifted.add_counters]
    found += [f"foreign counter {name}" for name in drifted.delete_counters]
    if drifted.owner is not None:
        found.append("owner mark missing or changed")
    structural = drifted.add_chains or drifted.delete_chains or drifted.delete_others
    if drifted.rewrite_rules and not structural:
        found.append("the rules were changed or flushed")
    for change in drifted.set_changes:
        if change.name in drifted.add_sets:
            continue
        parts = []
        if change.add:
            parts.append(f"{len(change.add)} missing ({_few(change.add)})")
        if change.delete:
            parts.append(f"{len(change.delete)} foreign ({_few(change.delete)})")
        found.append(f"set {change.name}: " + ", ".join(parts))
    return tuple(found)


def _few(elements: frozenset[str]) -> str:
    shown = sorted(elements, key=element_order)[:3]
    return " ".join(shown) + (" …" if len(elements) > 3 else "")


def _scratch_copy(store: StateStore) -> StateStore:
    """A store a dry run may change: holds and records copied, nothing ever saved."""
    scratch = copy.copy(store)
    scratch.records = dict(store.records)
    scratch.holds = dict(store.holds)
    return scratch
