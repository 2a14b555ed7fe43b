"""The daemon's building blocks: notify protocol, signals, state on disk, last known good, logs."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repogate.addresses import NormalisedEntries
from repogate.config import Config, parse_config
from repogate.daemon.notify import Notifier
from repogate.daemon.signals import HANDLED_SIGNALS, Signals, StopDuringStart
from repogate.lastgood import EMPTY, resolve
from repogate.logs import event, setup_logging
from repogate.plan import desired_state
from repogate.sources import SourceResult
from repogate.state import Record, StateStore

ENTRIES = NormalisedEntries(frozenset({"10.9.0.1"}), frozenset(), frozenset(), frozenset())
OTHER = NormalisedEntries(frozenset({"10.9.0.2"}), frozenset(), frozenset(), frozenset())


# --- notify ---


def test_notifier_without_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("fine")  # must not raise
    assert notifier.watchdog_interval is None


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
    notifier.ready("2 groups")
    assert server.recv(4096).decode().split("\n") == ["READY=1", "STATUS=2 groups"]
    notifier.reloading()
    reloading = server.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    notifier.watchdog()
    assert server.recv(4096) == b"WATCHDOG=1"
    assert notifier.watchdog_interval == 2.0
    notifier.close()
    server.close()


def test_notifier_abstract_socket() -> None:
    name = f"repogate-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
    assert server.recv(4096) == b"STOPPING=1"
    server.close()


def test_watchdog_for_another_pid_is_ignored() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


# --- state ---


def test_state_round_trip_and_atomic_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.put("mdm", Record("file:/x", 100.0, "/x", ENTRIES))
    assert store.save_if_due(200.0)
    assert not list((tmp_path / "state").glob(".state-*"))  # no temp file left behind
    loaded = StateStore(tmp_path / "state")
    loaded.load()
    assert loaded.get("mdm", "file:/x") == Record("file:/x", 100.0, "/x", ENTRIES)
    assert loaded.get("mdm", "file:/other") is None  # another source: its record does not apply


def test_confirming_refreshes_reach_the_disk_only_now_and_then(tmp_path: Path) -> None:
    store = StateStore(tmp_path, touch_interval=300)
    store.put("mdm", Record("f", 100.0, "", ENTRIES))
    assert store.save_if_due(100.0)
    store.put("mdm", Record("f", 110.0, "", ENTRIES))  # same entries, newer time
    assert not store.save_if_due(110.0)
    assert store.save_if_due(400.0)
    store.put("mdm", Record("f", 410.0, "", OTHER))  # changed entries: saved at once
    assert store.save_if_due(410.0)


@pytest.mark.parametrize("text", ["{not json", '{"version": 99, "groups": {}}', '{"version": 1}'])
def test_corrupt_state_is_ignored_with_a_warning(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_text(text)
    store = StateStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        store.load()
    assert store.records == {}
    assert "ignoring it" in caplog.text


# --- last known good ---


def mdm_config(tmp_path: Path, max_stale: str = "1h") -> Config:
    return parse_config(
        {
            "agent": {"state_dir": str(tmp_path), "max_stale": max_stale},
            "destinations": {"bb": {"networks": ["198.51.100.0/24"], "ports": [22]}},
            "clients": [{"name": "mdm", "type": "file", "path": str(tmp_path / "mdm.txt")}],
        }
    )


def test_success_is_recorded_and_a_failure_served_from_it(tmp_path: Path) -> None:
    config = mdm_config(tmp_path)
    store = StateStore(tmp_path)
    result = SourceResult(ENTRIES, accepted=1, origin="x")
    resolved = resolve(
        config, results={"mdm": result}, failures={}, store=store, current=None, now=1000.0
    )
    assert resolved.groups["mdm"] == ENTRIES and resolved.stale == {}
    resolved = resolve(
        config, results={}, failures={"mdm": "gone"}, store=store, current=None, now=2000.0
    )
    stale = resolved.stale
    assert resolved.groups["mdm"] == ENTRIES
    assert stale["mdm"].since == 1000.0
    assert stale["mdm"].expires_at == 1000.0 + 3600
    assert not stale["mdm"].expired
    assert stale["mdm"].reason == "gone"


def test_last_known_good_expires_after_max_stale(tmp_path: Path) -> None:
    config = mdm_config(tmp_path, max_stale="10m")
    store = StateStore(tmp_path)
    ok = SourceResult(ENTRIES, accepted=1)
    resolve(config, results={"mdm": ok}, failures={}, store=store, current=None, now=0.0)
    resolved = resolve(
        config, results={}, failures={"mdm": "x"}, store=store, current=None, now=601.0
    )
    assert resolved.groups["mdm"] == EMPTY
    assert resolved.stale["mdm"].expired


def test_without_a_record_the_kernels_entries_are_adopted(
    tmp_path: Path, kernel_from: Any, desired: Any
) -> None:
    config = mdm_config(tmp_path)
    store = StateStore(tmp_path)
    ok = SourceResult(ENTRIES, accepted=1)
    enforced = resolve(config, results={"mdm": ok}, failures={}, store=None, current=None, now=0)
    current = kernel_from(desired_state(config, enforced.groups))
    resolved = resolve(
        config, results={}, failures={"mdm": "x"}, store=store, current=current, now=50.0
    )
    assert resolved.groups["mdm"] == ENTRIES
    assert resolved.stale["mdm"].since == 50.0  # adopted now, so max_stale counts from now
    assert store.get("mdm", "file:" + str(tmp_path / "mdm.txt") + ":lines:") is not None


# --- logs ---


def test_json_logs_carry_the_event_fields() -> None:
    stream = io.StringIO()
    setup_logging("json", stream, environ={})
    event(logging.getLogger("repogate"), logging.INFO, "changed", set="s", added=["10.0.0.1"])
    line = json.loads(stream.getvalue())
    assert line["message"] == "changed"
    assert line["added"] == ["10.0.0.1"]
    assert line["level"] == "info"


def test_text_logs_have_no_timestamp_under_journald() -> None:
    stream = io.StringIO()
    setup_logging("text", stream, environ={"JOURNAL_STREAM": "8:123"})
    logging.getLogger("repogate").warning("drift found")
    assert stream.getvalue() == "<4>warning: drift found\n"  # priority for journald
    stream = io.StringIO()
    setup_logging("text", stream, environ={})
    logging.getLogger("repogate").warning("drift found")
    assert stream.getvalue().endswith(" warning: drift found\n")
    assert stream.getvalue()[:4].isdigit()


# --- shrink guard ---


def big(count: int) -> NormalisedEntries:
    addresses = frozenset(f"10.9.{i // 256}.{i % 256}" for i in range(count))
    return NormalisedEntries(addresses, frozenset(), frozenset(), frozenset())


def test_a_list_shrinking_past_max_shrink_is_held_until_the_next_refresh_agrees(
    tmp_path: Path,
) -> None:
    config = mdm_config(tmp_path)  # agent max_shrink: 50 %
    store = StateStore(tmp_path)

    def refresh(entries: NormalisedEntries, now: float, **kw: Any) -> Any:
        result = SourceResult(entries, accepted=len(entries), fetched_at=now)
        return resolve(
            config, results={"mdm": result}, failures={}, store=store, current=None, now=now, **kw
        )

    assert refresh(big(100), 0).groups["mdm"] == big(100)
    first = refresh(big(40), 10)  # shrank by 60 %: held
    assert first.groups["mdm"] == big(100)
    assert first.held["mdm"].previous == 100 and first.held["mdm"].proposed == 40
    agreed = refresh(big(40), 20)  # the next refresh agrees: applied
    assert agreed.groups["mdm"] == big(40) and agreed.held == {}
    assert refresh(big(30), 30).groups["mdm"] == big(30)  # 25 %: within the guard


def test_a_reconcile_reusing_the_held_result_does_not_release_the_hold(tmp_path: Path) -> None:
    """Only a later fetch agrees: a reconcile for another reason (a link event, another
    source's refresh) passes the same result again and must not count as agreement."""
    config = mdm_config(tmp_path)
    store = StateStore(tmp_path)

    def reconcile(result: SourceResult, now: float) -> Any:
        return resolve(
            config, results={"mdm": result}, failures={}, store=store, current=None, now=now
        )

    reconcile(SourceResult(big(100), accepted=100, fetched_at=0), 0)
    shrunk = SourceResult(big(40), accepted=40, fetched_at=10)
    assert reconcile(shrunk, 10).held
    again = reconcile(shrunk, 15)  # the same fetch, reconciled again
    assert again.held and again.groups["mdm"] == big(100)
    later = reconcile(SourceResult(big(40), accepted=40, fetched_at=20), 20)
    assert later.groups["mdm"] == big(40) and later.held == {}


def test_a_different_second_shrink_is_held_again_and_accept_shrink_applies_it(
    tmp_path: Path,
) -> None:
    config = mdm_config(tmp_path)
    store = StateStore(tmp_path)

    def refresh(entries: NormalisedEntries, now: float, **kw: Any) -> Any:
        result = SourceResult(entries, accepted=len(entries), fetched_at=now)
        return resolve(
            config, results={"mdm": result}, failures={}, store=store, current=None, now=now, **kw
        )

    refresh(big(100), 0)
    assert refresh(big(40), 10).held
    assert refresh(big(20), 20).groups["mdm"] == big(100)  # another shrink: still held
    store.save()
    reloaded = StateStore(tmp_path)
    reloaded.load()
    assert "mdm" in reloaded.holds  # the hold survives a restart
    accepted = refresh(big(20), 30, accept_shrink=True)
    assert accepted.groups["mdm"] == big(20) and accepted.held == {}


# --- signals ---


@pytest.fixture
def signals() -> Iterator[Signals]:
    """The daemon's handlers on this process, the test runner's put back after."""
    saved = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    handled = Signals()
    handled.install()
    try:
        yield handled
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_sigterm_during_the_first_fetches_stops_at_once(signals: Signals) -> None:
    """Raised in the main thread inside `interruptible()`, where a fetch may be waiting on
    an inventory's server: the daemon must not wait out its timeout."""
    with pytest.raises(StopDuringStart) as caught, signals.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2.0)  # a fetch waiting on its server: the handler's raise ends it
        pytest.fail("SIGTERM did not interrupt the wait")
    assert caught.value.signum == signal.SIGTERM
    assert signals.get(timeout=0) is None  # not queued as well: the stop is handled once


def test_sighup_during_the_first_fetches_and_sigterm_after_them_are_queued(
    signals: Signals,
) -> None:
    with signals.interruptible():
        os.kill(os.getpid(), signal.SIGHUP)  # a reload waits for the main loop
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    assert [signals.get(timeout=1.0) for _ in range(3)] == [
        signal.SIGHUP,
        signal.SIGTERM,
        signal.SIGINT,
    ]
    assert signals.get(timeout=0.01) is None
