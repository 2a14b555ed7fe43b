"""One reconcile: desired state from config, diff against the kernel, one transaction."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from repogate.config import Config
from repogate.errors import NotOwnedTableError
from repogate.model import DesiredState, KernelTable, Plan
from repogate.nft import names
from repogate.nft.backend import Backend
from repogate.nft.builders import Json, build_plan
from repogate.plan import desired_state, diff

SAMPLE = 5


@dataclass(frozen=True)
class SyncResult:
    desired: DesiredState
    plan: Plan
    commands: list[Json]
    applied: bool
    seconds: float


def check_owned(current: KernelTable | None) -> None:
    """Refuse to manage a same-named table that repogate did not create."""
    if current is not None and not current.is_empty and names.GATE_CHAIN not in current.chains:
        raise NotOwnedTableError(
            f"table inet {current.name} exists but was not created by repogate "
            f"(it has no '{names.GATE_CHAIN}' chain); choose another agent.table "
            "or remove it yourself"
        )


def sync(config: Config, backend: Backend, *, dry_run: bool = False) -> SyncResult:
    desired = desired_state(config)
    current = backend.read_table(desired.table)
    check_owned(current)
    plan = diff(desired, current)
    commands = build_plan(plan, desired)
    if dry_run or plan.is_empty:
        return SyncResult(desired, plan, commands, False, 0.0)
    seconds = backend.apply(commands)
    return SyncResult(desired, plan, commands, True, seconds)


def describe(plan: Plan, table: str) -> list[str]:
    """Human lines for what a plan changes, with a sample of the elements."""
    if plan.is_empty:
        return [f"table inet {table}: in sync, no changes"]
    lines: list[str] = []
    if plan.create_table:
        lines.append(f"table inet {table}: create")
    for label, items in (
        ("create set", plan.add_sets),
        ("delete set", plan.delete_sets),
        ("create counter", plan.add_counters),
        ("delete counter", plan.delete_counters),
        ("create chain", plan.add_chains),
        ("delete chain", plan.delete_chains),
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


def _sample(elements: frozenset[str], sign: str) -> str:
    shown = heapq.nsmallest(SAMPLE, elements)
    more = f" … {len(elements) - SAMPLE} more" if len(elements) > SAMPLE else ""
    return "[" + " ".join(f"{sign}{element}" for element in shown) + more + "]"
