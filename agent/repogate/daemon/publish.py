"""What each reconcile tells the admin: event lines, metrics, the live view, STATUS.

The one place the daemon keeps what it last said (which sources were stale or
held back, how many drift repairs, the live view), so a change is announced
once, when it happens, and `status` answers from the same view.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from repogate.daemon.events import announce_expiries, announce_holds, log_changes
from repogate.daemon.metrics import Metrics
from repogate.daemon.notify import Notifier
from repogate.daemon.sources import SourceTable
from repogate.devices import inventory_views
from repogate.engine import Generation, Outcome
from repogate.lastgood import ShrinkHold, Staleness
from repogate.live import (
    InventoryView,
    LiveView,
    destinations_of,
    not_gated_warning,
    source_views,
    summary,
)
from repogate.logs import event
from repogate.sources.devices.source import DeviceSource

log = logging.getLogger("repogate")


class Publisher:
    def __init__(
        self,
        metrics: Metrics,
        notifier: Notifier,
        sources: SourceTable,
        config_path: Path,
        clock: Callable[[], float],
    ) -> None:
        self.metrics = metrics
        self.notifier = notifier
        self.sources = sources
        self.config_path = config_path
        self.clock = clock
        self.started_at = clock()
        self.live: LiveView | None = None  # swapped whole after each reconcile
        self.drift_repairs = 0
        self.last_error = ""
        self.stale: dict[str, Staleness] = {}
        self.held: dict[str, ShrinkHold] = {}

    def failed(self, reason: str, error: str) -> None:
        self.last_error = error
        self.metrics.reconciles.labels(result="failed").inc()
        event(log, logging.ERROR, f"reconcile failed ({reason}): {error}", reason=reason)
        self.notifier.status(f"reconcile failing: {error}")

    def committed(self, generation: Generation, outcome: Outcome, reason: str) -> None:
        """Logs, metrics and the live view after a reconcile the kernel accepted."""
        self.last_error = ""
        self.metrics.reconciles.labels(result="ok").inc()
        if announce_expiries(self.stale, dict(outcome.stale)) and outcome.applied:
            reason += ", expiry"
        self.stale = dict(outcome.stale)
        announce_holds(self.held, dict(outcome.held))
        self.held = dict(outcome.held)
        keys = {spec.key for spec in generation.specs if spec.dynamic}
        self.metrics.holds(keys, outcome.held)
        for key in keys:
            self.metrics.source_stale.labels(source=key).set(int(key in outcome.stale))
        self.metrics.forget_sources(keys)
        self._announce_table(generation, outcome, reason)
        desired = outcome.desired
        self.metrics.known_sets(desired.sets)
        self.metrics.set_sizes({name: len(spec.elements) for name, spec in desired.sets.items()})
        self.metrics.group_sizes({name: len(entries) for name, entries in desired.groups.items()})
        device_sources = self.sources.device_sources()
        self.metrics.devices(_device_counts(device_sources))
        inventories = inventory_views(device_sources, self.clock())
        self.metrics.inventories(inventories)
        self._publish(generation, outcome, inventories)

    def _announce_table(self, generation: Generation, outcome: Outcome, reason: str) -> None:
        if outcome.drift:
            self.drift_repairs += 1
            self.metrics.drift_repairs.inc()
            found = "; ".join(outcome.drift)
            event(
                log,
                logging.WARNING,
                f"drift in table inet {generation.table}: {found}; repaired",
                reason="drift repair",
                found=list(outcome.drift),
            )
        if outcome.moved_from is not None:
            event(
                log,
                logging.WARNING,
                f"agent.table changed: table inet {generation.table} replaced table inet "
                f"{outcome.moved_from} in one transaction",
                reason=reason,
            )
        if outcome.applied:
            log_changes(outcome, "drift repair" if outcome.drift else reason)
            for change in outcome.plan.set_changes:
                for op, items in (("add", change.add), ("delete", change.delete)):
                    if items:
                        self.metrics.set_changes.labels(set=change.name, op=op).inc(len(items))

    def _publish(
        self, generation: Generation, outcome: Outcome, inventories: tuple[InventoryView, ...]
    ) -> None:
        destinations = destinations_of(generation, outcome)
        self.metrics.destination_sizes({d.name: d.addresses for d in destinations})
        desired = outcome.desired
        inputs = self.sources.snapshot(generation)
        view = LiveView(
            table=generation.table,
            daemon_pid=os.getpid(),
            sources=source_views(
                generation,
                outcome,
                results=inputs.results,
                failures=inputs.failures,
                last_success=self.sources.last_success,
            ),
            destinations=destinations,
            groups={name: len(entries) for name, entries in desired.groups.items()},
            sets={name: len(spec.elements) for name, spec in desired.sets.items()},
            in_sync=True,
            last_reconcile=self.clock(),
            last_error=self.last_error,
            drift_repairs=self.drift_repairs,
            started_at=self.started_at,
            config=str(self.config_path),
            inventories=inventories,
        )
        previous = self.live
        self.live = view
        if view.not_gated and (previous is None or previous.not_gated != view.not_gated):
            event(log, logging.WARNING, not_gated_warning(view.not_gated), not_gated=view.not_gated)
        self.notifier.status(summary(view))

    def status_line(self) -> str:
        return summary(self.live) if self.live is not None else "starting"


def _device_counts(sources: Mapping[str, DeviceSource]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for group, source in sources.items():
        for verdict in source.verdicts:
            key = (group, verdict.state)
            counts[key] = counts.get(key, 0) + 1
    return counts
