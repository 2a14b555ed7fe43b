"""`repogate run`: keep the owned table right for as long as the service runs.

The daemon only schedules; the work is done by sources (fetch), lastgood and plan
(what to enforce) and the enforcer (one transaction). APScheduler runs one refresh
job per dynamic client group, one reconcile job and a cheap probe; the main
thread only waits for signals and pings the systemd watchdog.

Reconciles are serialised by a lock and coalesced by a pending set: a burst of
refreshes marks reasons as pending and wakes the reconcile job, whose loop
drains them, so it becomes one transaction and two never run at once.
"""

from __future__ import annotations

import datetime
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from repogate.audit import AuditLog
from repogate.config import load_config
from repogate.daemon.events import announce_expiries, announce_holds, log_changes, plural
from repogate.daemon.metrics import Metrics, MetricsError, MetricsServer
from repogate.daemon.netlink import LinkEvent, LinkWatcher, egress_interfaces
from repogate.daemon.notify import Notifier
from repogate.daemon.sources import SourceTable
from repogate.daemon.watch import BootRuleset, EgressWatch
from repogate.enforcer import Enforcer, Outcome
from repogate.errors import ConfigError, RepogateError
from repogate.lastgood import ShrinkHold, Staleness, resolve
from repogate.logs import event, setup_logging
from repogate.model import CounterValue
from repogate.nft.backend import Backend, NftBackend
from repogate.nft.builders import build_delete_table
from repogate.plan import desired_state
from repogate.state import StateStore

if TYPE_CHECKING:
    pass

log = logging.getLogger("repogate")
UTC = datetime.UTC
PROBE_INTERVAL = 2.0  # seconds between cheap "is the table still there" probes
BOOT_RULESET = "ruleset.nft"  # in state_dir: the last enforced table, for nftables.conf
RECONCILE_DEBOUNCE = 0.2  # seconds a wake waits, so a burst of refreshes coalesces
STUCK_AFTER = 120.0  # a reconcile running longer stops the watchdog pings
LOG_SAMPLE = 50  # entries listed per change in a log line (the count is always exact)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@dataclass
class Counters:
    """What the daemon has done, for status lines and (later) metrics."""

    reconciles_ok: int = 0
    reconciles_failed: int = 0
    drift_repairs: int = 0
    reloads_ok: int = 0
    reloads_failed: int = 0
    last_change: float | None = None
    stale: dict[str, Staleness] = field(default_factory=dict)
    held: dict[str, ShrinkHold] = field(default_factory=dict)


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
        self.counters = Counters()
        self._metrics_server: MetricsServer | None = None
        self._egress = EgressWatch(self.metrics)
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._state_lock = threading.Lock()  # config and source states
        self._reconcile_lock = threading.Lock()  # one transaction at a time
        self._pending: set[str] = set()
        self._verify_pending = False
        self._next_verify = 0.0  # time.monotonic() of the next full re-read
        self._boot: BootRuleset | None = None
        self._busy_since: float | None = None
        self.sources = SourceTable(self.metrics, clock)
        self._scheduler: Any = None

    # -- life cycle ---------------------------------------------------------------

    def run(self) -> int:
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            setup_logging("text")
            for problem in exc.problems:
                log.error("invalid config %s: %s", exc.source, problem)
            return EXIT_CONFIG
        setup_logging(self.config.agent.log_format)
        event(log, logging.INFO, f"starting with {self.config_path}", config=str(self.config_path))
        # Handlers first, so a SIGHUP or SIGTERM during start-up waits for the main loop
        # instead of killing the process with its default action.
        self._install_signal_handlers()
        try:
            self.enforcer = Enforcer(self.backend_factory())
        except RepogateError as exc:
            log.error("cannot use nftables: %s", exc)
            return EXIT_FAILURE
        self.store = StateStore(self.config.agent.state_dir)
        self.store.load()
        self.audit = AuditLog(self.config.agent.state_dir, self.config.audit.path)
        self._metrics_started_with: object = self.config.metrics
        self.metrics.watch_traffic(self._read_traffic)
        if self.config.metrics.host is not None:
            try:
                self._metrics_server = MetricsServer(self.config.metrics, self.metrics.registry)
            except MetricsError as exc:
                log.error("%s", exc)
                return EXIT_FAILURE
            scheme = "https" if self.config.metrics.tls_cert_file else "http"
            host = self.config.metrics.host
            shown = f"[{host}]" if ":" in host else host
            event(
                log,
                logging.INFO,
                f"metrics on {scheme}://{shown}:{self._metrics_server.port}/metrics",
            )
        self.sources.configure(self.config, self.store)
        # Local sources now; network sources (DNS, HTTPS, feeds) start from their last
        # known good in state_dir and are fetched by their jobs right after READY, so
        # a start before the network is up (or with a slow server) is not held up.
        # Destination hosts never seen before are the exception: without them the
        # destination would be ungated until DNS answers (bounded by the resolver's
        # deadline, seconds, unlike an HTTPS feed).
        self._fetch_all(local_only=True)
        for key in self.sources.unseen_hosts(self.store):
            self._fetch(key, force=True)
        # The rules of the previous run stay in force until this diff applies: the
        # table is never flushed or recreated at start.
        self._next_verify = time.monotonic() + self.config.agent.verify_interval
        if self._reconcile({"start"}, verify=True) is None:
            log.error("initial reconcile failed; the previous rules (if any) stay in force")
            return EXIT_FAILURE
        self._update_egress(log_always=True)
        # Worker threads inherit a blocked signal mask, so signals always reach the main
        # thread, which is waiting for them (a signal landing on a worker would only be
        # noticed at the main loop's next tick).
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            self._start_scheduler()
            self._watcher = LinkWatcher(self._on_link_event)
            self._watcher.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self.notifier.ready(self.status_line())
        event(log, logging.INFO, f"ready: {self.status_line()}")
        self._main_loop()
        return self._stop()

    def _main_loop(self) -> None:
        watchdog = self.notifier.watchdog_interval
        tick = min(1.0, watchdog) if watchdog else 1.0
        next_ping = time.monotonic()
        while True:
            try:
                signum: int | None = self._signals.get(timeout=tick)
            except queue.Empty:
                signum = None
            if signum == signal.SIGHUP:
                self._reload()
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
        self.notifier.stopping()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # lets a transaction in flight finish
        with self._reconcile_lock:
            self._save_state(force=True)
            if self.config.agent.on_stop == "remove":
                self._boot_ruleset().remove()
                try:
                    if self.enforcer.backend.read_table(self.config.agent.table) is not None:
                        self.enforcer.backend.apply(build_delete_table(self.config.agent.table))
                        self.audit.record_event(self.config.agent.table, "table deleted", "stop")
                    event(
                        log,
                        logging.WARNING,
                        f"on_stop = remove: deleted table inet {self.config.agent.table}; "
                        "protected destinations are no longer gated",
                        reason="stop",
                    )
                except RepogateError as exc:
                    log.error("could not remove the table on stop: %s", exc)
            else:
                boot = self._boot_ruleset()
                boot.write(self.enforcer.last_applied, force=boot.dirty)
                event(
                    log,
                    logging.INFO,
                    f"stopped; table inet {self.config.agent.table} stays in force "
                    "(on_stop = keep)",
                )
        if self._metrics_server is not None:
            self._metrics_server.close()
        self.audit.reopen()
        self.notifier.close()
        return EXIT_OK

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            self._signals.put(signum)

        for signum in HANDLED_SIGNALS:
            signal.signal(signum, handler)

    # -- scheduling ----------------------------------------------------------------

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler  # noqa: PLC0415

        self._scheduler = BackgroundScheduler(timezone=UTC)
        now = datetime.datetime.now(UTC)
        self._scheduler.add_job(
            self._reconcile_job,
            "interval",
            seconds=self.config.agent.verify_interval,
            id="reconcile",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=now + datetime.timedelta(seconds=self.config.agent.verify_interval),
        )
        self._scheduler.add_job(
            self._probe_job,
            "interval",
            seconds=min(PROBE_INTERVAL, self.config.agent.verify_interval),
            id="probe",
            max_instances=1,
            coalesce=True,
        )
        self._schedule_refreshes()
        self._scheduler.start()

    def _schedule_refreshes(self) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith("refresh:"):
                job.remove()
        now = datetime.datetime.now(UTC)
        dynamic = [spec for spec in self.sources.specs() if spec.interval is not None]
        for spec in dynamic:
            interval = float(spec.interval or 60.0)
            # A network source not fetched yet (after start or reload) goes first thing.
            fresh = self.sources.never_fetched(spec.key)
            first = now + datetime.timedelta(seconds=0.1 if fresh else interval)
            self._scheduler.add_job(
                self._refresh_job,
                "interval",
                args=[spec.key],
                seconds=interval,
                id=f"refresh:{spec.key}",
                max_instances=1,
                coalesce=True,
                next_run_time=first,
            )

    def request_reconcile(self, reason: str, *, verify: bool = False) -> None:
        with self._state_lock:
            self._pending.add(reason)
            self._verify_pending = self._verify_pending or verify
        if self._scheduler is not None:
            wake = datetime.datetime.now(UTC) + datetime.timedelta(seconds=RECONCILE_DEBOUNCE)
            self._scheduler.modify_job("reconcile", next_run_time=wake)

    def _reconcile_job(self) -> None:
        """Periodic verify, and the drain of reconciles requested by refreshes.

        Wakes from refreshes diff against the enforcer's model; only when a verify is
        due (every verify_interval) or requested is the whole table re-read.
        """
        now = time.monotonic()
        with self._state_lock:
            if now >= self._next_verify:
                self._pending.add("verify")
                self._verify_pending = True
                self._next_verify = now + self.config.agent.verify_interval
        while True:
            with self._state_lock:
                if not self._pending:
                    return
                reasons, self._pending = self._pending, set()
                verify, self._verify_pending = self._verify_pending, False
            self._reconcile(reasons, verify=verify)

    def _probe_job(self) -> None:
        # Never probe while a reconcile runs: it may be changing the table right now,
        # and it will leave the model right anyway.
        if not self._reconcile_lock.acquire(blocking=False):
            return
        try:
            last = self.enforcer.last_applied
            if last is None:
                return
            intact = self.enforcer.looks_intact(last)
        except RepogateError as exc:
            log.warning("probe failed: %s", exc)
            return
        finally:
            self._reconcile_lock.release()
        if not intact:
            self.request_reconcile("drift", verify=True)

    # -- sources -------------------------------------------------------------------

    def _fetch_all(self, *, local_only: bool = False) -> None:
        for key in self.sources.keys(local_only=local_only):
            self._fetch(key, force=True)

    def _refresh_job(self, name: str) -> None:
        if self._fetch(name, force=False):
            self.request_reconcile(f"refresh {name}")
        refresh_in = self.sources.refresh_in(name)
        if refresh_in is not None and self._scheduler is not None:
            # The source asked to be asked again sooner or later than its interval.
            when = datetime.datetime.now(UTC) + datetime.timedelta(seconds=refresh_in)
            self._scheduler.modify_job(f"refresh:{name}", next_run_time=when)

    def _fetch(self, name: str, *, force: bool) -> bool:
        """Fetch one source; return whether what it contributes may have changed."""
        return self.sources.fetch(name, force=force, held=name in self.counters.held)

    def _read_traffic(self) -> Mapping[str, CounterValue]:
        """The table's named counters, for the scrape (under the backend's own lock)."""
        reader = getattr(self.enforcer.backend, "read_counters", None)
        if reader is not None:
            counters: Mapping[str, CounterValue] = reader(self.config.agent.table)
            return counters
        current = self.enforcer.backend.read_table(self.config.agent.table)
        return current.counters if current is not None else {}

    # -- reconcile -----------------------------------------------------------------

    def _reconcile(self, reasons: set[str], *, verify: bool = False) -> Outcome | None:
        with self._reconcile_lock:
            self._busy_since = self.clock()
            started = time.perf_counter()
            try:
                outcome = self._reconcile_locked(reasons, verify=verify)
            finally:
                self._busy_since = None
                self.metrics.reconcile_duration.observe(time.perf_counter() - started)
            self.metrics.reconciles.labels(result="ok" if outcome is not None else "failed").inc()
            return outcome

    def _reconcile_locked(self, reasons: set[str], *, verify: bool) -> Outcome | None:
        reason = ", ".join(sorted(reasons))
        with self._state_lock:
            config = self.config
        snapshot = self.sources.snapshot()
        source_specs, results, failures = snapshot.specs, snapshot.results, snapshot.failures
        if self.store.reload_if_changed():
            log.info("state file changed on disk (repogate sync); re-read it")
        resolved = resolve(
            config,
            results=results,
            failures=failures,
            store=self.store,
            current=self.enforcer.model,
            now=self.clock(),
            source_specs=source_specs,
        )
        expired_now = self._log_staleness(resolved.stale)
        if expired_now:
            reasons = {*reasons, "expiry"}
            reason = ", ".join(sorted(reasons))
        self._log_holds(resolved.held)
        keys = {spec.key for spec in source_specs if spec.dynamic}
        self.metrics.holds(keys, resolved.held)
        for key in keys:
            self.metrics.source_stale.labels(source=key).set(int(key in resolved.stale))
        self.metrics.forget_sources(keys)
        desired = desired_state(config, resolved.groups, resolved.destinations)
        try:
            outcome = self.enforcer.apply(desired, verify=verify)
        except RepogateError as exc:
            self.counters.reconciles_failed += 1
            event(log, logging.ERROR, f"reconcile failed ({reason}): {exc}", reason=reason)
            self.notifier.status(f"reconcile failing: {exc}")
            return None
        self.counters.reconciles_ok += 1
        if outcome.drift:
            self.counters.drift_repairs += 1
            self.metrics.drift_repairs.inc()
            event(
                log,
                logging.WARNING,
                "drift in table inet {}: {}; repaired".format(
                    desired.table, "; ".join(outcome.drift)
                ),
                reason="drift repair",
                found=list(outcome.drift),
            )
        if outcome.moved_from is not None:
            event(
                log,
                logging.WARNING,
                f"agent.table changed: table inet {desired.table} replaced table inet "
                f"{outcome.moved_from} in one transaction",
                reason=reason,
            )
        if outcome.applied:
            self.counters.last_change = self.clock()
            why = "drift repair" if outcome.drift else reason
            log_changes(outcome, desired, why)
            self.audit.record(outcome.plan, desired, why)
            for change in outcome.plan.set_changes:
                if change.add:
                    self.metrics.set_changes.labels(set=change.name, op="add").inc(len(change.add))
                if change.delete:
                    self.metrics.set_changes.labels(set=change.name, op="delete").inc(
                        len(change.delete)
                    )
            self._boot_ruleset().mark()
        self.metrics.known_sets(desired.sets)
        self.metrics.set_sizes({name: len(spec.elements) for name, spec in desired.sets.items()})
        self.metrics.group_sizes({name: len(entries) for name, entries in desired.groups.items()})
        self._save_state()
        self._boot_ruleset().write(desired)
        self.notifier.status(self.status_line())
        return outcome

    def _log_holds(self, held: dict[str, ShrinkHold]) -> None:
        announce_holds(self.counters.held, held)
        self.counters.held = held

    def _log_staleness(self, stale: dict[str, Staleness]) -> bool:
        """Log sources whose last known good just expired; return whether any did."""
        expired_now = announce_expiries(self.counters.stale, stale)
        self.counters.stale = stale
        return expired_now

    def _boot_ruleset(self) -> BootRuleset:
        path = self.config.agent.state_dir / BOOT_RULESET
        if self._boot is None or self._boot.path != path:
            self._boot = BootRuleset(path)
        return self._boot

    def _save_state(self, *, force: bool = False) -> None:
        try:
            if force:
                self.store.save()
            else:
                self.store.save_if_due(self.clock())
        except OSError as exc:
            log.warning("could not save state in %s: %s", self.store.path, exc)

    # -- reload --------------------------------------------------------------------

    def _reload(self) -> None:
        self.notifier.reloading()
        self.audit.reopen()  # logrotate moved [audit] path: write to a new file
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.counters.reloads_failed += 1
            self.metrics.config_reloads.labels(result="failed").inc()
            self.metrics.reload_ok.set(0)
            for problem in exc.problems:
                log.error("reload refused, invalid config %s: %s", exc.source, problem)
            event(log, logging.ERROR, "reload refused: keeping the running config")
            self.notifier.ready(f"reload refused (invalid config); {self.status_line()}")
            return
        if config.agent.log_format != self.config.agent.log_format:
            setup_logging(config.agent.log_format)
        with self._reconcile_lock, self._state_lock:
            self.config = config
        self.sources.configure(config, self.store)
        self._fetch_all(local_only=True)
        if self._scheduler is not None:
            self._scheduler.reschedule_job(
                "reconcile", trigger="interval", seconds=config.agent.verify_interval
            )
            self._schedule_refreshes()
        # Re-read the kernel: a reload often follows `systemctl reload nftables`
        # (ReloadPropagatedFrom=), whose flush the model knows nothing about.
        outcome = self._reconcile({"reload"}, verify=True)
        self.counters.reloads_ok += 1
        self.metrics.config_reloads.labels(result="ok").inc()
        self.metrics.reload_ok.set(1)
        if config.metrics != self._metrics_started_with:
            log.warning("[metrics] changed: restart the service to apply it")
        self.audit.path = config.audit.path
        unchanged = " (no change to enforcement)" if outcome and not outcome.applied else ""
        event(log, logging.INFO, f"reloaded {self.config_path}{unchanged}", reason="reload")
        self._update_egress(log_always=False)
        self.notifier.ready(self.status_line())

    # -- links and egress addresses -----------------------------------------------

    def _egress_interfaces(self) -> list[str]:
        return egress_interfaces(self.config.agent.egress_interfaces)

    def _update_egress(self, *, log_always: bool) -> None:
        self._egress.update(self._egress_interfaces(), log_always=log_always)

    def _on_link_event(self, link_event: LinkEvent) -> None:
        watched = set(self._egress_interfaces())
        if link_event.interface not in watched and link_event.kind not in ("link-up",):
            return
        detail = f" {link_event.address}" if link_event.address else ""
        event(
            log,
            logging.INFO,
            f"link event: {link_event.interface} {link_event.kind}{detail}",
            interface=link_event.interface,
            link_event=link_event.kind,
        )
        self._update_egress(log_always=False)
        if link_event.kind == "link-up":
            # Connectivity may be back: retry failing sources now rather than at their
            # next interval, and check the table.
            for name in self.sources.failing():
                self._fetch(name, force=True)
            self.request_reconcile(f"link up {link_event.interface}", verify=True)

    # -- status --------------------------------------------------------------------

    def status_line(self) -> str:
        with self._state_lock:
            groups = len(self.config.clients)
        failing = self.sources.failing()
        held = sorted(self.counters.held)
        last = self.enforcer.last_applied
        entries = sum(len(e) for e in last.groups.values()) if last is not None else 0
        line = f"{plural(groups, 'group')}, {plural(entries, 'entry', 'entries')}"
        if failing:
            line += f", stale: {', '.join(failing)}"
        if held:
            line += f", held back: {', '.join(held)}"
        if self.counters.reconciles_failed and self.enforcer.last_applied is None:
            line += ", reconcile failing"
        return line
