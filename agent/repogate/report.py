"""What a reconcile did and what each source said, in an admin's words.

Shared by `repogate sync` (printed) and the daemon (answered over its control
socket), so both say the same thing the same way.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Mapping

from repogate.addresses import element_order
from repogate.engine import Generation, Inputs, Outcome
from repogate.lastgood import Staleness
from repogate.model import Plan
from repogate.sources import SourceSpec

SAMPLE = 5


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def describe_sources(generation: Generation, inputs: Inputs, outcome: Outcome) -> list[str]:
    """One line per source that is not plain static config: size, rejects, failures."""
    lines: list[str] = []
    stale, held = outcome.stale, outcome.held
    for spec in generation.specs:
        result = inputs.results.get(spec.key)
        failure = inputs.failures.get(spec.key)
        hold = held.get(spec.key)
        if failure is not None:
            lines.append(f"{spec.label}: FAILED: {failure}; {_keeping(spec, stale)}")
        elif hold is not None:
            lines.append(
                f"{spec.label}: HELD BACK: it shrank from {hold.previous} to "
                f"{hold.proposed} entries, more than max_shrink; the previous entries stay "
                "until the next refresh agrees or `repogate sync --accept-shrink`"
            )
        elif result is not None and (spec.dynamic or result.rejected_count):
            # A destination's label already names its kind: "(hosts) (hosts)" read badly.
            parts = (spec.kind if spec.group is not None else "", result.origin)
            detail = " ".join(part for part in parts if part)
            head = f"{spec.label} ({detail})" if detail else spec.label
            line = f"{head}: {plural(result.accepted, 'entry', 'entries')}"
            if result.rejected_count:
                sample = "; ".join(str(r) for r in result.rejected_sample[:3])
                line += f", {plural(result.rejected_count, 'entry', 'entries')} rejected ({sample})"
            lines.append(line)
    return lines


def _keeping(spec: SourceSpec, stale: Mapping[str, Staleness] | None) -> str:
    info = (stale or {}).get(spec.key)
    if info is None:
        return "keeping the entries enforced now"
    return info.describe(_when)


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
