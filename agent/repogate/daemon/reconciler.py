"""The reconcile loop: one thread that coalesces requests into transactions.

Refreshes, link events, the drift monitor and reloads call `request()`, which
only marks a reason as pending and wakes the thread: it never touches the
scheduler, so nothing a worker does can wait on a lock the stop path holds (the
deadlock of APScheduler's `shutdown(wait=True)` joining a worker stuck in
`modify_job`). A request after a quiet spell is applied at once (a device that stops
qualifying must lose access now, not a debounce later); requests arriving within
DEBOUNCE of the last transaction are coalesced into the next one, so a burst of
refreshes costs at most one transaction per DEBOUNCE.

A reconcile that fails (nftables refused, anything unexpected) is logged as one
line and its reasons are requested again after a backoff, never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("repogate")
DEBOUNCE = 0.2  # seconds between transactions while requests keep coming
RETRY_FIRST, RETRY_MAX = 2.0, 60.0  # backoff after a failed reconcile

Work = Callable[[set[str], bool], bool]  # (reasons, verify) -> succeeded
Tick = Callable[[], None]  # the periodic check, run on this thread when idle


class Reconciler:
    def __init__(self, work: Work, tick: Tick, tick_interval: float) -> None:
        self._work = work
        self._tick = tick
        self.tick_interval = tick_interval
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._verify = False
        self._stopping = False
        self._retry_in = RETRY_FIRST
        self._last_done = float("-inf")  # monotonic end of the last transaction
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, reason: str, *, verify: bool = False) -> None:
        with self._cond:
            self._pending.add(reason)
            self._verify = self._verify or verify
            self._cond.notify()

    def stop(self, timeout: float) -> bool:
        """Stop after the transaction in flight, if any; False if it did not end in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_interval
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    remaining = next_tick - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping:
                    return
            if not self._pending:
                next_tick = time.monotonic() + self.tick_interval
                self._guard("periodic check", self._tick)
                continue
            with self._cond:
                # Within DEBOUNCE of the last transaction: let the burst gather.
                quiet_at = self._last_done + DEBOUNCE
                self._cond.wait_for(
                    lambda: self._stopping, timeout=max(0.0, quiet_at - time.monotonic())
                )
                if self._stopping:
                    return
                reasons, self._pending = self._pending, set()
                verify, self._verify = self._verify, False
            ok = False
            try:
                ok = self._work(reasons, verify)
                self._last_done = time.monotonic()
            except Exception as exc:
                log.error(
                    "reconcile (%s) failed unexpectedly: %s: %s; retrying in %.0f s",
                    ", ".join(sorted(reasons)),
                    type(exc).__name__,
                    exc,
                    self._retry_in,
                )
            if ok:
                self._retry_in = RETRY_FIRST
                continue
            self._retry_later(reasons, verify)

    def _retry_later(self, reasons: set[str], verify: bool) -> None:
        delay, self._retry_in = self._retry_in, min(self._retry_in * 2, RETRY_MAX)
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=delay)
            if self._stopping:
                return
            self._pending |= {reason for reason in reasons if not reason.startswith("retry")}
            self._pending.add("retry")
            self._verify = True  # the failure may have come from a stale model

    def _guard(self, what: str, call: Tick) -> None:
        try:
            call()
        except Exception as exc:
            log.error("%s failed: %s: %s", what, type(exc).__name__, exc)
