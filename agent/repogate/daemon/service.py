"""`repogate run`: keep the owned table right for as long as the service runs.

The daemon only schedules and reports. APScheduler runs one refresh job per
dynamic source; the reconciler thread turns their requests into transactions
through the engine (the same path as `repogate sync`); the control socket, which
is also the table's lock, answers status, sync and explain; the main thread
waits for signals and pings the systemd watchdog.

Stopping never waits for a source: the scheduler is shut down without joining
its workers (one may be stuck on a server that never answers), the reconciler
finishes the transaction in flight, the final state and boot ruleset are
written, and `repogate run` then leaves with os._exit, so no abandoned worker
thread can hold the process up.
"""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from repogate.audit import AuditLog
from repogate.config import Config, load_config
from repogate.daemon.control import ControlServer
from repogate.daemon.drift import DriftWatch
from repogate.daemon.listeners import WhyServer, start_metrics
from repogate.daemon.metrics import Metrics
from repogate.daemon.metrics_server import MetricsServer
from repogate.daemon.netlink import read_egress
from repogate.daemon.notify import Notifier
from repogate.daemon.probes import ProbeRunner
from repogate.daemon.publish import Publisher
from repogate.daemon.reconciler import Reconciler
from repogate.daemon.reload import reload
from repogate.daemon.requests import RequestHandler
from repogate.daemon.signals import HANDLED_SIGNALS, Signals, StopDuringStart
from repogate.daemon.sources import SourceTable
from repogate.daemon.watch import BootWriter, EgressWatch, StateWriter
from repogate.engine import Engine, Generation, Outcome
from repogate.errors import ConfigError, RepogateError
from repogate.instance import Instance
from repogate.logs import event, setup_logging
from repogate.model import CounterValue
from repogate.nft.backend import Backend, NftBackend
from repogate.runtime import TableLock
from repogate.state import StateStore

log = logging.getLogger("repogate")
UTC = datetime.UTC
STOP_DEADLINE = 4.0  # seconds the transaction in flight may take to finish at a stop
STUCK_AFTER = 120.0  # a reconcile running longer stops the watchdog pings

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


class Daemon:
    def __init__(
        self,
        config_path: Path,
        *,
        backend_factory: Callable[[], Backend] = NftBackend,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config_path = config_path
        self.backend_factory = backend_factory
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.sources = SourceTable(self.metrics, clock)
        self.generation: Generation  # swapped whole by a reload
        self.publisher = Publisher(self.metrics, self.notifier, self.sources, config_path, clock)
        self._signals = Signals()
        self._scheduler: Any = None
        self._stopping = threading.Event()
        self._busy_since: float | None = None
        self._metrics_server: MetricsServer | None = None
        self.egress = EgressWatch(
            self.metrics,
            lambda: read_egress(self.config, self.engine.last_applied, self.engine.backend),
            lambda: self.config.agent.egress_interfaces,
        )

    @property
    def config(self) -> Config:
        return self.generation.config

    # -- life cycle ---------------------------------------------------------------

    def run(self) -> int:
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            setup_logging("text")
            for problem in exc.problems:
                log.error("invalid config %s: %s", exc.source, problem)
            return EXIT_CONFIG
        setup_logging(config.agent.log_format)
        event(log, logging.INFO, f"starting with {self.config_path}", config=str(self.config_path))
        # Handlers first, so a SIGHUP or SIGTERM during start-up waits for the main loop.
        self._signals.install()
        try:
            self.lock = TableLock(config.agent.table)
        except RepogateError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
        try:
            return self._run_locked(config)
        finally:
            self.lock.close()

    def _run_locked(self, config: Config) -> int:
        try:
            backend = self.backend_factory()
        except RepogateError as exc:
            log.error("cannot use nftables: %s", exc)
            return EXIT_FAILURE
        state_dir = config.agent.state_dir
        store = StateStore(state_dir)
        store.load()
        self.audit = AuditLog(state_dir, config.audit.path)
        self.engine = Engine(backend, store, self.audit, Instance.load(state_dir), clock=self.clock)
        self.generation = self.sources.configure(config, store)
        self.metrics.watch_traffic(self._read_traffic)
        self.metrics.watch_state_saves(lambda: self.engine.store.save_error is None)
        if not self._start_metrics(config):
            return EXIT_FAILURE
        # Local sources now; network sources start from their last known good (or the
        # preset's snapshot) and are fetched by their jobs right after READY, so a
        # start before the network is up is not held up. Destination hosts never seen
        # are the exception: bounded by the resolver's deadline (seconds).
        try:
            with self._signals.interruptible():
                self._fetch_all(local_only=True)
                for key in self.sources.unseen_hosts(store):
                    self._fetch(key, force=True)
        except StopDuringStart as stop:
            name = signal.Signals(stop.signum).name
            event(log, logging.INFO, f"stopping on {name} during the first fetches; no change made")
            return EXIT_OK
        self.boot = BootWriter(state_dir / "ruleset.nft", lambda: self.engine.last_applied)
        self.state_writer = StateWriter(self.engine)
        self.engine.state_changed = self.state_writer.mark
        self.drift = DriftWatch(backend, config, self._verify)
        self.reconciler = Reconciler(self._reconcile_work, self.drift.tick, self.drift.interval)
        # The rules of the previous run stay in force until this diff applies: the
        # table is never flushed or recreated at start.
        if not self.reconcile({"start"}, verify=True):
            log.error("initial reconcile failed; the previous rules (if any) stay in force")
            return EXIT_FAILURE
        self.egress.update(log_always=True)
        requests = RequestHandler(self)
        self.control = ControlServer(lambda: self.lock.listener, requests.handle)
        self.why = WhyServer(config.why.listen, requests.why)
        self.probes = ProbeRunner(self.metrics)
        self.probes.configure(config.probes)
        # Worker threads inherit a blocked signal mask, so signals always reach the main
        # thread, which is waiting for them.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            self._start_scheduler()
            parts = (self.boot, self.state_writer, self.drift, self.reconciler, self.control)
            for part in (*parts, self.probes):
                part.start()
            from repogate.daemon.netlink import LinkWatcher  # noqa: PLC0415 - pyroute2

            self._watcher = LinkWatcher(self._on_link_event)
            self._watcher.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self.notifier.ready(self.status_line())
        event(log, logging.INFO, f"ready: {self.status_line()}")
        self._main_loop()
        return self._stop()

    def _start_metrics(self, config: Config) -> bool:
        self._metrics_started_with: object = config.metrics
        if config.metrics.host is None:
            return True
        self._metrics_server = start_metrics(config.metrics, self.metrics)
        return self._metrics_server is not None

    def _main_loop(self) -> None:
        watchdog = self.notifier.watchdog_interval
        tick = min(1.0, watchdog) if watchdog else 1.0
        next_ping = time.monotonic()
        while True:
            signum = self._signals.get(timeout=tick)
            if signum == signal.SIGHUP:
                reload(self)
            elif signum in (signal.SIGTERM, signal.SIGINT):
                event(log, logging.INFO, f"stopping on {signal.Signals(signum).name}")
                return
            if watchdog and time.monotonic() >= next_ping and self._healthy():
                self.notifier.watchdog()
                next_ping = time.monotonic() + watchdog

    def _healthy(self) -> bool:
        busy = self._busy_since
        return busy is None or self.clock() - busy < STUCK_AFTER

    def _stop(self) -> int:
        """Stop within seconds whatever the sources are doing (see the module doc)."""
        self._stopping.set()
        self.notifier.stopping()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)  # workers may be stuck: never join them
        self.control.close()
        self.probes.stop()
        self.drift.close()
        if not self.reconciler.stop(STOP_DEADLINE):
            log.warning("the reconcile in flight did not finish in time; stopping anyway")
        self.state_writer.close()
        table = self.generation.table
        # A sync asked over the control socket may still be committing: it takes
        # milliseconds, but a stop never waits on it for longer than the deadline.
        quiet = self.engine.lock.acquire(timeout=STOP_DEADLINE)
        try:
            self.engine.save_state(force=True)
            if self.config.agent.on_stop == "keep":
                self.boot.flush()
        finally:
            if quiet:
                self.engine.lock.release()
        if self.config.agent.on_stop == "remove":
            self.boot.remove()
            self._remove_table(table)
        else:
            event(log, logging.INFO, f"stopped; table inet {table} stays in force (on_stop = keep)")
        if self._metrics_server is not None:
            self._metrics_server.close()
        self.why.close()
        self.audit.reopen()
        self.notifier.close()
        return EXIT_OK

    def _remove_table(self, table: str) -> None:
        try:
            self.engine.delete_table(table, "stop")
        except RepogateError as exc:
            log.error("could not remove the table on stop: %s", exc)
            return
        event(
            log,
            logging.WARNING,
            f"on_stop = remove: deleted table inet {table}; "
            "protected destinations are no longer gated",
            reason="stop",
        )

    # -- scheduling ----------------------------------------------------------------

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler  # noqa: PLC0415

        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._schedule_refreshes()
        self._scheduler.start()

    def _schedule_refreshes(self) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith("refresh:"):
                job.remove()
        now = datetime.datetime.now(UTC)
        for spec in self.generation.specs:
            if spec.interval is None:
                continue
            # A network source not fetched yet (after start or reload) goes first thing.
            first = 0.1 if self.sources.never_fetched(spec.key) else spec.interval
            self._scheduler.add_job(
                self._refresh_job,
                "interval",
                args=[spec.key],
                seconds=spec.interval,
                id=f"refresh:{spec.key}",
                max_instances=1,
                coalesce=True,
                next_run_time=now + datetime.timedelta(seconds=first),
            )

    def request_reconcile(self, reason: str, *, verify: bool = False) -> None:
        self.reconciler.request(reason, verify=verify)

    def _refresh_job(self, key: str) -> None:
        if self._stopping.is_set():
            return
        try:
            changed = self._fetch(key, force=False)
        except Exception as exc:  # a source bug must not end its refreshes silently
            log.error("refresh of %s failed: %s: %s", key, type(exc).__name__, exc)
            return
        if changed:
            self.request_reconcile(f"refresh {key}")
        refresh_in = self.sources.refresh_in(key)
        if refresh_in is not None and not self._stopping.is_set():
            # The source asked to be asked again sooner or later than its interval.
            when = datetime.datetime.now(UTC) + datetime.timedelta(seconds=refresh_in)
            try:
                self._scheduler.modify_job(f"refresh:{key}", next_run_time=when)
            except Exception as exc:  # the job went with a reload, or the scheduler stopped
                log.debug("cannot reschedule %s: %s", key, exc)

    def _fetch_all(self, *, local_only: bool = False) -> None:
        for key in self.sources.source_keys(local_only=local_only):
            self._fetch(key, force=True)

    def _fetch(self, key: str, *, force: bool) -> bool:
        """Fetch one source; return whether what it contributes may have changed."""
        return self.sources.fetch(key, force=force, held=key in self.publisher.held)

    def _read_traffic(self) -> Mapping[str, CounterValue]:
        return self.engine.backend.read_counters(self.generation.table)

    # -- reconcile -----------------------------------------------------------------

    def _reconcile_work(self, reasons: set[str], verify: bool) -> bool:
        return self.reconcile(reasons, verify=verify) is not None

    def reconcile(
        self,
        reasons: set[str],
        *,
        verify: bool = False,
        dry_run: bool = False,
        accept_shrink: bool = False,
        adopt: bool = False,
    ) -> Outcome | None:
        """One reconcile through the engine, then metrics, logs and the live view."""
        generation = self.generation  # one generation for the whole reconcile
        reason = ", ".join(sorted(reasons))
        inputs = self.sources.snapshot(generation)
        if self.engine.store.reload_if_changed():
            log.info("state file changed on disk (repogate sync); re-read it")
        self._busy_since = self.clock()
        started = time.perf_counter()
        try:
            outcome = self.engine.reconcile(
                generation,
                inputs,
                reason=reason,
                verify=verify,
                dry_run=dry_run,
                accept_shrink=accept_shrink,
                adopt=adopt,
            )
        except RepogateError as exc:
            self.publisher.failed(reason, str(exc))
            return None
        finally:
            self._busy_since = None
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        if dry_run:
            return outcome
        if outcome.applied:
            self.boot.mark()
        self.drift.committed()
        self.publisher.committed(generation, outcome, reason)
        return outcome

    def _verify(self, why: str) -> None:
        self.request_reconcile(why, verify=True)

    # -- links and egress addresses -----------------------------------------------

    def _on_link_event(self, link_event: Any) -> None:
        # Any address change matters once egress.addresses are declared (they may sit
        # on an interface that is not the uplink).
        declared = bool(self.config.egress.addresses) and "address" in link_event.kind
        if link_event.kind in ("link-down", "link-removed"):
            # A VPN server restarting: its old status rows must stop admitting at once.
            lost = self.sources.tunnel_lost(link_event.interface, self.clock())
            if any([self._fetch(key, force=True) for key in lost]):
                self.request_reconcile(f"tunnel {link_event.interface} down")
        watched = link_event.interface in self.egress.interfaces()
        if not (watched or declared or link_event.kind == "link-up"):
            return
        detail = f" {link_event.address}" if link_event.address else ""
        what = f"link event: {link_event.interface} {link_event.kind}{detail}"
        event(log, logging.INFO, what, interface=link_event.interface, link_event=link_event.kind)
        self.egress.update(log_always=False)
        if link_event.kind == "link-up":
            # Connectivity may be back: retry failing sources now, and check the table.
            for key in self.sources.failing():
                self._fetch(key, force=True)
            self.request_reconcile(f"link up {link_event.interface}", verify=True)

    # -- status --------------------------------------------------------------------

    def status_line(self) -> str:
        return self.publisher.status_line()
