"""The daemon's hold on the kernel: apply desired states as minimal transactions.

It keeps a model of the owned table (read once, then updated from each committed
transaction), so a reconcile costs the change rather than a re-read of every
element. A periodic verify re-reads the table; whatever differs from what was
last applied is drift (a firewall reload, a hand edit) and is reported and repaired.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from repogate.addresses import element_order
from repogate.errors import NftError
from repogate.model import DesiredState, KernelTable, Plan
from repogate.nft import names
from repogate.nft.backend import Backend
from repogate.nft.builders import build_delete_table, build_plan
from repogate.nft.names import expected_rule_comments
from repogate.plan import diff, expected_table
from repogate.reconcile import check_owned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    applied: bool
    seconds: float
    drift: tuple[str, ...] = ()  # what a verify found changed behind repogate's back
    moved_from: str | None = None  # the table renamed away from (agent.table changed)


class Enforcer:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.model: KernelTable | None = None
        self.model_known = False
        self.last_applied: DesiredState | None = None

    def read(self, table: str) -> KernelTable | None:
        current = self.backend.read_table(table)
        check_owned(current)
        self.model, self.model_known = current, True
        return current

    def looks_intact(self, desired: DesiredState) -> bool:
        """Cheap probe, no element listing: do the gate chain's rules still carry the
        fingerprint of what was applied? Catches a deleted table or flushed rules at
        once; a flushed set waits for the next full verify."""
        if self.last_applied is None:
            return False
        expected = expected_rule_comments(desired)[names.GATE_CHAIN]
        return self.backend.chain_comments(desired.table, names.GATE_CHAIN) == expected

    def apply(self, desired: DesiredState, *, verify: bool = False) -> Outcome:
        if self.last_applied is not None and self.last_applied.table != desired.table:
            return self._move(self.last_applied.table, desired)
        drift: tuple[str, ...] = ()
        if verify or not self.model_known:
            fresh = self.read(desired.table)
            if self.last_applied is not None:
                drifted = diff(self.last_applied, fresh)
                if fresh is None:
                    drift = (f"table inet {desired.table} was deleted",)
                elif not drifted.is_empty:
                    drift = describe_drift(drifted)
        plan = diff(desired, self.model)
        if plan.is_empty:
            self.last_applied = desired
            return Outcome(plan, False, 0.0, drift)
        started = time.perf_counter()
        try:
            self.backend.apply(build_plan(plan, desired))
        except NftError as first:
            # The model was wrong (the table changed since it was read): read the
            # kernel and try once more with a plan made against what it really holds.
            log.warning("transaction refused (%s); re-reading the table and retrying", first)
            try:
                fresh = self.read(desired.table)
                plan = diff(desired, fresh)
                self.backend.apply(build_plan(plan, desired))
            except NftError:
                self.model_known = False
                raise
        self.model = expected_table(desired)
        self.last_applied = desired
        return Outcome(plan, True, time.perf_counter() - started, drift)

    def _move(self, old: str, desired: DesiredState) -> Outcome:
        """agent.table changed: fill the new table and delete the old in one transaction,
        so no client is refused or admitted by the wrong table even for a moment."""
        target = self.read(desired.table)
        plan = diff(desired, target)
        commands = build_plan(plan, desired)
        old_table = self.backend.read_table(old)
        check_owned(old_table)
        if old_table is not None:
            commands += build_delete_table(old)
        started = time.perf_counter()
        self.backend.apply(commands)
        self.model = expected_table(desired)
        self.last_applied = desired
        return Outcome(plan, True, time.perf_counter() - started, moved_from=old)

    def forget(self) -> None:
        """Distrust the model: the next apply re-reads the kernel first."""
        self.model_known = False


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
