"""The daemon's event lines: what changed, held back or expired, in an admin's words.

One line per event with its structured fields (JSON with `log_format = "json"`).
"""

from __future__ import annotations

import logging

from repogate.addresses import element_order
from repogate.engine import Outcome
from repogate.lastgood import ShrinkHold, Staleness
from repogate.logs import event

log = logging.getLogger("repogate")
LOG_SAMPLE = 50  # entries listed per change in a log line (the count is always exact)


def log_changes(outcome: Outcome, reason: str) -> None:
    """One line per changed set (with its group or destination), and one for the commit."""
    plan, desired = outcome.plan, outcome.desired
    if plan.create_table or plan.rewrite_rules:
        event(
            log,
            logging.INFO,
            f"table inet {desired.table}: "
            + ("created" if plan.create_table else "rules rewritten")
            + f" ({len(desired.rules)} rules; reason: {reason})",
            reason=reason,
        )
    for change in plan.set_changes:
        owner = desired.sets[change.name].owner
        added = sorted(change.add, key=element_order)
        removed = sorted(change.delete, key=element_order)
        text = f"{owner}: set {change.name}"
        if added:
            text += f" added {len(added)} [{sample(added)}]"
        if removed:
            text += f" removed {len(removed)} [{sample(removed)}]"
        event(
            log,
            logging.INFO,
            f"{text} (reason: {reason})",
            set=change.name,
            owner=owner,
            added=added,
            removed=removed,
            reason=reason,
        )
    event(
        log,
        logging.INFO,
        f"applied in one transaction in {outcome.seconds * 1000:.1f} ms",
        seconds=round(outcome.seconds, 6),
        reason=reason,
    )


def announce_holds(before: dict[str, ShrinkHold], now: dict[str, ShrinkHold]) -> None:
    for key, hold in now.items():
        if key not in before:
            event(
                log,
                logging.WARNING,
                f"source {key} shrank from {hold.previous} to {hold.proposed} entries, "
                "more than max_shrink: held back; the previous entries stay until the "
                "next refresh agrees or `repogate sync --accept-shrink`",
                source=key,
                previous=hold.previous,
                proposed=hold.proposed,
            )
    for key in set(before) - set(now):
        event(log, logging.INFO, f"source {key}: shrink confirmed and applied", source=key)


def announce_expiries(before: dict[str, Staleness], now: dict[str, Staleness]) -> bool:
    """Log sources whose last known good just expired; return whether any did."""
    expired_now = False
    for name, info in now.items():
        previous = before.get(name)
        if info.expired and (previous is None or not previous.expired):
            expired_now = True
            event(
                log,
                logging.ERROR,
                f"source {name}: last known good entries expired (max_stale); "
                "the group now admits nobody",
                source=name,
            )
    return expired_now


def sample(items: list[str]) -> str:
    shown = " ".join(items[:LOG_SAMPLE])
    return shown + (f" … {len(items) - LOG_SAMPLE} more" if len(items) > LOG_SAMPLE else "")
