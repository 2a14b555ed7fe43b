"""The daemon's probes: each on its interval, in one thread of their own.

Probes take seconds (a TLS handshake, a key exchange), so they never run on the
reconcile thread or the scheduler's workers; one thread runs whichever are due,
one at a time, and sleeps on an event until the next is. `run_now` (the control
socket's `probe`) runs the asked ones at once in the caller's thread. Stopping
sets the event and does not wait: a probe in flight is bounded by its timeout and
runs in a daemon thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from repogate.config.schema import Probe
from repogate.daemon.metrics import Metrics
from repogate.logs import event
from repogate.probes import ProbeResult, run_probe

log = logging.getLogger("repogate")
FIRST_RUN_DELAY = 1.0  # after start or reload: once the first reconcile has applied


class ProbeRunner:
    def __init__(
        self,
        metrics: Metrics,
        run: Callable[[Probe], ProbeResult] = run_probe,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._run = run
        self._clock = clock
        self._lock = threading.Lock()
        self._probes: dict[str, Probe] = {}
        self._due: dict[str, float] = {}
        self.results: dict[str, ProbeResult] = {}
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="probes", daemon=True)

    def configure(self, probes: Iterable[Probe]) -> None:
        """Set the probes (start, reload): new or changed ones run soon, gone ones go."""
        wanted = {probe.name: probe for probe in probes}
        with self._lock:
            for name in list(self._probes):
                if wanted.get(name) != self._probes[name]:
                    self._probes.pop(name)
                    self._due.pop(name, None)
                    self.results.pop(name, None)
            for name, probe in wanted.items():
                if name not in self._probes:
                    self._probes[name] = probe
                    self._due[name] = self._clock() + FIRST_RUN_DELAY
            self.metrics.probes(list(self.results.values()), list(self._probes))
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def run_now(self, names: Iterable[str] = ()) -> list[ProbeResult]:
        """Run the named probes (all without names) now; unknown names raise KeyError."""
        with self._lock:
            chosen = [self._probes[name] for name in names] or list(self._probes.values())
        return [self._record(probe) for probe in chosen]

    def _loop(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                now = self._clock()
                due = [self._probes[n] for n, at in self._due.items() if at <= now]
                later = [at for at in self._due.values() if at > now]
            for probe in due:
                if self._stopped.is_set():
                    return
                self._record(probe)
            self._wake.clear()
            wait = (min(later) - self._clock()) if later and not due else 0.0 if due else 60.0
            self._wake.wait(max(0.0, wait))

    def _record(self, probe: Probe) -> ProbeResult:
        result = self._run(probe)
        with self._lock:
            if self._probes.get(probe.name) != probe:
                return result  # reconfigured meanwhile: this result is for the old probe
            previous = self.results.get(probe.name)
            self.results[probe.name] = result
            self._due[probe.name] = self._clock() + probe.interval
            self.metrics.probes(list(self.results.values()), list(self._probes))
        if previous is None or previous.ok != result.ok:
            level = logging.INFO if result.ok else logging.WARNING
            event(log, level, f"probe {result.line()}", probe=probe.name, ok=result.ok)
        return result
