"""The daemon's sources: one state per source, fetched on demand, safe across threads.

Refresh jobs fetch here; the reconcile takes a snapshot of the latest results and
failures. A reload keeps the state of every source whose config did not change
(a DNS source its per-name cache), so it does not re-fetch the world.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from repogate.config import Config
from repogate.daemon.metrics import Metrics
from repogate.engine import Generation, Inputs
from repogate.errors import SourceError
from repogate.lastgood import KERNEL
from repogate.logs import event
from repogate.report import plural
from repogate.sources import LOCAL_KINDS, Source, SourceResult, SourceSpec, specs
from repogate.state import StateStore

if TYPE_CHECKING:
    from repogate.sources.devices.source import DeviceSource
    from repogate.sources.dns import Resolves

log = logging.getLogger("repogate")


@dataclass
class SourceState:
    spec: SourceSpec
    source: Source
    result: SourceResult | None = None
    failure: str | None = None
    failing_since: float | None = None
    signature: object | None = None


class SourceTable:
    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, SourceState] = {}
        self._resolver: Resolves | None = None
        self._resolver_settings: object | None = None
        self.last_success: dict[str, float] = {}  # real fetches only, seeded from state

    def configure(self, config: Config, store: StateStore) -> Generation:
        """One state per source of `config`; unchanged sources keep theirs."""
        found = specs(config)
        if any(spec.kind in ("dns", "hosts") for spec in found):
            found = specs(config, self._shared_resolver(config))
        with self._lock:
            old, self._states = self._states, {}
            for spec in found:
                previous = old.get(spec.key)
                keep = previous is not None and previous.spec == spec
                self._states[spec.key] = (
                    previous if keep and previous else (SourceState(spec, spec.make()))
                )
        self._seed_metrics(store)
        return Generation(config, tuple(found))

    def _shared_resolver(self, config: Config) -> Resolves:
        """One resolver for every DNS source, remade when [resolver] changes."""
        if self._resolver is None or self._resolver_settings != config.resolver:
            from repogate.sources import shared_resolver  # noqa: PLC0415

            self._resolver = shared_resolver(config)
            self._resolver_settings = config.resolver
        return self._resolver

    def _seed_metrics(self, store: StateStore) -> None:
        """Last successes from state_dir, so freshness survives a restart in the metrics."""
        dynamic = [spec for spec in self.specs() if spec.dynamic]
        self.metrics.known_sources(spec.key for spec in dynamic)
        for spec in dynamic:
            record = store.get(spec.key, spec.fingerprint)
            if record is not None and record.origin != KERNEL:  # adoptions are not fetches
                self.metrics.source_last_success.labels(source=spec.key).set(record.fetched_at)
                self.last_success.setdefault(spec.key, record.fetched_at)

    # -- what there is ---------------------------------------------------------------------

    def specs(self) -> list[SourceSpec]:
        with self._lock:
            return [state.spec for state in self._states.values()]

    def source_keys(self, *, local_only: bool = False) -> list[str]:
        return [s.key for s in self.specs() if not local_only or s.kind in LOCAL_KINDS]

    def unseen_hosts(self, store: StateStore) -> list[str]:
        """Destination hosts with no record at all: the destination would be ungated."""
        return [
            spec.key
            for spec in self.specs()
            if spec.kind == "hosts" and store.get(spec.key, spec.fingerprint) is None
        ]

    def source(self, key: str) -> Source | None:
        """The source object itself (the devices view reads a device group's verdicts)."""
        with self._lock:
            state = self._states.get(key)
            return state.source if state is not None else None

    def device_sources(self) -> dict[str, DeviceSource]:
        """The device groups' sources by group, for the devices view and inventories."""
        from repogate.sources.devices.source import DeviceSource  # noqa: PLC0415

        with self._lock:
            states = list(self._states.items())
        return {key: s.source for key, s in states if isinstance(s.source, DeviceSource)}

    def tunnel_lost(self, interface: str, now: float) -> list[str]:
        """Tell the device groups whose tunnel is `interface` that it went down or away;
        their keys, to be read again at once."""
        lost = {k: s for k, s in self.device_sources().items() if s.group.interface == interface}
        for source in lost.values():
            source.tunnel_lost(now)
        return list(lost)

    def never_fetched(self, key: str) -> bool:
        with self._lock:
            state = self._states[key]
            return state.result is None and state.failure is None

    def failing(self) -> list[str]:
        with self._lock:
            return sorted(key for key, state in self._states.items() if state.failure)

    def refresh_in(self, key: str) -> float | None:
        with self._lock:
            state = self._states.get(key)
            return state.result.refresh_in if state and state.result else None

    def snapshot(self, generation: Generation) -> Inputs:
        """What the generation's sources last said (a reload in between cannot make a
        key go missing: sources of another generation are simply not there)."""
        keys = {spec.key for spec in generation.specs}
        with self._lock:
            states = [(key, state) for key, state in self._states.items() if key in keys]
        return Inputs(
            results={key: state.result for key, state in states if state.result is not None},
            failures={key: state.failure for key, state in states if state.failure is not None},
        )

    # -- fetching --------------------------------------------------------------------------

    def fetch(self, key: str, *, force: bool, held: bool = False) -> bool:
        """Fetch one source; return whether what it contributes may have changed.

        A held-back shrink (`held`) is fetched even if unchanged: the next refresh
        that agrees with it is what releases it.
        """
        with self._lock:
            state = self._states.get(key)
        if state is None:
            return False
        signature = state.source.signature()
        unchanged = signature is not None and signature == state.signature
        if not force and unchanged and state.failure is None and not held:
            return False
        started = time.perf_counter()
        try:
            try:
                result = state.source.fetch()
            finally:
                elapsed = time.perf_counter() - started
                self.metrics.source_refresh_duration.labels(source=key).observe(elapsed)
                self._count_dns(state.source)
        except SourceError as exc:
            return self._failed(key, state, exc)
        result = dataclasses.replace(result, fetched_at=self.clock())
        with self._lock:
            recovered = state.failure is not None
            previous = state.result
            # What status shows changes too: the notes, and which entries were rejected
            # (a list that gains a 0.0.0.0/0 keeps its entries, but status must say so).
            changed = previous is None or _shown(previous) != _shown(result)
            state.result, state.failure, state.failing_since = result, None, None
            state.signature = signature
        if recovered:
            event(log, logging.INFO, f"source {key} recovered", source=key)
        # Said when the rejections change, not at every read (a device group reads its
        # map every few seconds and refuses the same devices each time).
        rejections = (result.rejected_count, result.rejected_sample)
        if result.rejected_count and (
            previous is None or rejections != (previous.rejected_count, previous.rejected_sample)
        ):
            sample = "; ".join(str(r) for r in result.rejected_sample[:3])
            event(
                log,
                logging.WARNING,
                f"source {key}: {plural(result.rejected_count, 'entry', 'entries')} "
                f"rejected ({sample})",
                source=key,
                rejected=result.rejected_count,
            )
        now = self.clock()
        self.last_success[key] = now
        self.metrics.source_up.labels(source=key).set(1)
        self.metrics.source_last_success.labels(source=key).set(now)
        if result.rejected_count and changed:
            self.metrics.source_rejected.labels(source=key).inc(result.rejected_count)
        return changed or recovered or held

    def _failed(self, key: str, state: SourceState, exc: SourceError) -> bool:
        self.metrics.source_up.labels(source=key).set(0)
        with self._lock:
            first = state.failure is None
            state.failure, state.result = str(exc), None
            state.failing_since = state.failing_since or self.clock()
            state.signature = None
        if first:
            event(
                log,
                logging.WARNING,
                f"source {key} failed: {exc}; serving its last known good entries",
                source=key,
                error=str(exc),
            )
        return first

    def _count_dns(self, source: Source) -> None:
        """Add a DNS source's last lookups to repogate_dns_queries_total."""
        outcomes = getattr(source, "last_outcomes", None)
        if isinstance(outcomes, dict):
            for result, count in outcomes.items():
                if count:
                    self.metrics.dns_queries.labels(result=str(result)).inc(count)


def _shown(result: SourceResult) -> tuple[object, ...]:
    """What a refresh changes in the table or in what `status` says about the source."""
    return (result.entries, result.notes, result.rejected_count, result.rejected_sample)
