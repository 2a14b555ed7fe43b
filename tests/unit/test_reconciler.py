"""The reconcile loop: a request after a quiet spell is applied by itself, and requests
arriving while a transaction runs are coalesced into the next one."""

from __future__ import annotations

import queue
import threading

from repogate.daemon.reconciler import Reconciler


def test_requests_during_a_transaction_coalesce_into_the_next_one() -> None:
    calls: queue.SimpleQueue[frozenset[str]] = queue.SimpleQueue()
    release = threading.Event()

    def work(reasons: set[str], _verify: bool) -> bool:
        calls.put(frozenset(reasons))
        release.wait(5.0)
        return True

    reconciler = Reconciler(work, tick=lambda: None, tick_interval=3600.0)
    reconciler.start()
    try:
        reconciler.request("device revoked")
        assert calls.get(timeout=5.0) == {"device revoked"}  # alone, not gathered
        for reason in ("refresh a", "refresh b", "drift"):
            reconciler.request(reason)
        release.set()
        assert calls.get(timeout=5.0) == {"refresh a", "refresh b", "drift"}
        assert calls.empty()
    finally:
        release.set()
        assert reconciler.stop(timeout=5.0)


def test_stop_does_not_wait_for_a_gathering_burst() -> None:
    done = threading.Event()

    def work(_reasons: set[str], _verify: bool) -> bool:
        done.set()
        return True

    reconciler = Reconciler(work, tick=lambda: None, tick_interval=3600.0)
    reconciler.start()
    reconciler.request("first")
    assert done.wait(5.0)
    reconciler.request("second")  # gathers for DEBOUNCE after the first
    assert reconciler.stop(timeout=5.0)
