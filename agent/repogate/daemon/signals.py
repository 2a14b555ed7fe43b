"""The daemon's signals: queued for its main loop, or a stop at once during the first fetches.

Handlers are installed first thing, so a SIGHUP or SIGTERM during start-up waits for
the main loop. But the first fetches come before it, and a device group's first read
may wait on its inventory's server for a whole timeout (an MDM holding the request):
within `interruptible()`, SIGTERM and SIGINT raise `StopDuringStart` in the main thread
instead, which is safe because nothing is changed before the first reconcile (found by
tests/e2e/test_faults_process.py: a stop took the inventory's whole timeout).
"""

from __future__ import annotations

import contextlib
import queue
import signal
from collections.abc import Iterator
from types import FrameType

HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class StopDuringStart(BaseException):
    """SIGTERM or SIGINT during the first fetches; a BaseException, so that no
    source's `except Exception` can swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Signals:
    """The signals received, in order, for the main thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._interruptible = False

    def install(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._handle)

    def get(self, timeout: float) -> int | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A SIGTERM or SIGINT within raises StopDuringStart (catch it outside)."""
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._interruptible and signum != signal.SIGHUP:
            raise StopDuringStart(signum)
        self._queue.put(signum)
