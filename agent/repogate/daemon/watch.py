"""Two things the daemon keeps up to date beside the table: the host's egress
addresses (which Bitbucket's IP allowlist must contain) and the boot ruleset
(the last enforced table, for nftables.service to load before the network is up).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from repogate.daemon.metrics import Metrics
from repogate.daemon.netlink import egress_interfaces, interface_addresses
from repogate.egress import EgressReport
from repogate.egress import describe as describe_egress
from repogate.engine import Engine
from repogate.logs import event
from repogate.model import DesiredState
from repogate.nft.render import render_boot
from repogate.state import write_atomically

log = logging.getLogger("repogate")
REWRITE_EVERY = 10.0  # seconds between boot ruleset rewrites while changes keep coming
SAVE_RETRY = 5.0  # seconds between attempts to save a state file that could not be saved


class EgressWatch:
    """The egress interfaces' addresses and the egress report (what Bitbucket sees),
    read at start, on link events and at full verifies; logged when they change."""

    def __init__(
        self,
        metrics: Metrics,
        report: Callable[[], EgressReport] | None = None,
        configured: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self.metrics = metrics
        self.current: list[tuple[str, str]] = []
        self._report = report
        self._configured = configured  # agent.egress_interfaces, as the config says now
        self.report: EgressReport | None = None

    def interfaces(self) -> list[str]:
        """The egress interfaces: configured, or those with a default route."""
        return egress_interfaces(self._configured())

    def update(self, *, log_always: bool) -> list[tuple[str, str]]:
        """Read the addresses; log them when they changed (or `log_always`)."""
        self._update_report(log_always=log_always)
        interfaces = self.interfaces()
        try:
            found = [(a.interface, a.address) for a in interface_addresses(interfaces)]
        except Exception as exc:  # netlink trouble must not stop enforcement
            log.warning("cannot read egress addresses: %s", exc)
            return self.current
        if log_always or found != self.current:
            listed = ", ".join(f"{i} {a}" for i, a in found)
            if not found:
                listed = (
                    "none found (no global address on "
                    + (", ".join(interfaces) or "any default-route interface")
                    + "; set agent.egress_interfaces to the interfaces traffic leaves by)"
                )
            event(
                log,
                logging.WARNING if not found or not log_always else logging.INFO,
                f"egress interface addresses: {listed}",
                egress=[{"interface": i, "address": a} for i, a in found],
            )
        self.current = found
        self.metrics.egress(found, self.report)
        return found

    def fresh(self) -> EgressReport:
        """The report read now (for `status`), without logging or metrics."""
        if self._report is None:
            raise RuntimeError("no egress report configured")
        return self._report()

    def _update_report(self, *, log_always: bool) -> None:
        if self._report is None:
            return
        try:
            report = self._report()
        except Exception as exc:  # the report is advice: it must not stop enforcement
            log.warning("cannot work out the egress path: %s", exc)
            return
        previous, self.report = self.report, report
        if log_always or previous is None or previous.problems != report.problems:
            for line in describe_egress(report):
                level = logging.WARNING if line.startswith("PROBLEM") else logging.INFO
                event(log, level, f"egress: {line}", egress=report.to_json())


class BootWriter:
    """state_dir/ruleset.nft, kept equal to the enforced table (see render_boot).

    Written by its own thread, at most every REWRITE_EVERY seconds while changes
    keep coming, so rendering 100,000 sorted entries never sits on the reconcile
    path; `flush()` writes at once (the stop).
    """

    def __init__(self, path: Path, last_applied: Callable[[], DesiredState | None]) -> None:
        self.path = path
        self._last_applied = last_applied
        self._dirty = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # one writer at a time: the thread or flush()
        self._failure: str | None = None  # said once, then tried again quietly
        self._thread = threading.Thread(target=self._run, name="boot-ruleset", daemon=True)

    def start(self) -> None:
        if not self.path.exists():
            self._dirty.set()
        self._thread.start()

    def mark(self) -> None:
        self._dirty.set()

    def flush(self) -> None:
        """Write now if anything changed since the last write; stop the thread."""
        self._stopped.set()
        if self._dirty.is_set() or not self.path.exists():
            self._write()

    def remove(self) -> None:
        self._stopped.set()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._dirty.wait(timeout=1.0)
            if self._stopped.is_set() or not self._dirty.is_set():
                continue
            self._write()
            self._stopped.wait(REWRITE_EVERY)

    def _write(self) -> None:
        with self._lock:
            desired = self._last_applied()
            if desired is None:
                return
            self._dirty.clear()
            try:
                write_atomically(self.path, render_boot(desired))
            except OSError as exc:
                failure = str(exc.strerror or exc)
                if failure != self._failure:
                    log.warning("could not write %s: %s", self.path, failure)
                self._failure = failure
                self._dirty.set()  # tried again REWRITE_EVERY seconds later
                return
            self._failure = None


class StateWriter:
    """Writes the engine's state file from its own thread after reconciles, so the
    write and its fsync never sit on the reconcile path; the stop writes it last."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dirty = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def mark(self) -> None:
        self._dirty.set()

    def close(self) -> None:
        self._stopped.set()
        self._dirty.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stopped.is_set():
            # A save that failed (a read-only or full state_dir) is tried again on a
            # timer: the file, and status, recover without waiting for a change.
            failing = self.engine.store.save_error is not None
            self._dirty.wait(SAVE_RETRY if failing else None)
            if self._stopped.is_set():
                return
            self._dirty.clear()
            with self.engine.lock:  # records change only inside a reconcile
                self.engine.save_state()
