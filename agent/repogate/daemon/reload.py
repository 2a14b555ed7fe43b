"""SIGHUP: read the config again and swap it in whole, or refuse and keep running.

A new config becomes a new `Generation` (config plus sources) assigned in one
step, so a reconcile running meanwhile sees the old one or the new one, never a
mix. A renamed `agent.table` takes the new table's lock first (refused if
another repogate holds it); the engine then fills the new table and deletes
the old one in one transaction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from repogate.config import load_config
from repogate.errors import ConfigError, RepogateError
from repogate.logs import event, setup_logging
from repogate.runtime import TableLock

if TYPE_CHECKING:
    from repogate.daemon.service import Daemon

log = logging.getLogger("repogate")


def reload(daemon: Daemon) -> None:
    daemon.notifier.reloading()
    daemon.audit.reopen()  # logrotate moved [audit] path: write to a new file
    old = daemon.config
    try:
        config = load_config(daemon.config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload refused, invalid config %s: %s", exc.source, problem)
        _refused(daemon, "invalid config")
        return
    new_lock = None
    if config.agent.table != old.agent.table:
        try:
            new_lock = TableLock(config.agent.table)
        except RepogateError as exc:
            log.error("reload refused: %s", exc)
            _refused(daemon, "table locked")
            return
    if config.agent.state_dir != old.agent.state_dir:
        log.warning("agent.state_dir changed: restart the service to use it")
    if config.agent.log_format != old.agent.log_format:
        setup_logging(config.agent.log_format)
    daemon.generation = daemon.sources.configure(config, daemon.engine.store)
    if new_lock is not None:
        old_lock, daemon.lock = daemon.lock, new_lock
        old_lock.close()
    for key in daemon.sources.source_keys(local_only=True):
        daemon.sources.fetch(key, force=True)
    daemon.drift.configure(config)
    daemon.probes.configure(config.probes)
    if daemon._scheduler is not None:
        daemon._schedule_refreshes()
    # Re-read the kernel: a reload often follows `systemctl reload nftables`
    # (ReloadPropagatedFrom=), whose flush the model knows nothing about.
    outcome = daemon.reconcile({"reload"}, verify=True)
    daemon.metrics.config_reloads.labels(result="ok").inc()
    daemon.metrics.reload_ok.set(1)
    if config.metrics != old.metrics:
        log.warning("[metrics] changed: restart the service to apply it")
    if config.why != old.why:
        log.warning("[why] changed: restart the service to apply it")
    daemon.audit.path = config.audit.path
    unchanged = " (no change to enforcement)" if outcome and not outcome.applied else ""
    event(log, logging.INFO, f"reloaded {daemon.config_path}{unchanged}", reason="reload")
    daemon.notifier.ready(daemon.status_line())


def _refused(daemon: Daemon, why: str) -> None:
    daemon.metrics.config_reloads.labels(result="failed").inc()
    daemon.metrics.reload_ok.set(0)
    event(log, logging.ERROR, f"reload refused: keeping the running config ({why})")
    daemon.notifier.ready(f"reload refused ({why}); {daemon.status_line()}")
