"""The daemon's life cycle in-process, against the in-memory kernel: no root needed.

Signals are real (sent to this process from a timer thread); the main loop runs in
the test's main thread, since only the main thread may install signal handlers.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from repogate.daemon.notify import Notifier
from repogate.daemon.service import Daemon
from repogate.errors import NftUnavailableError

CONFIG = """\
[agent]
state_dir = "{state}"
verify_interval = "1s"
on_stop = "{on_stop}"

[metrics]
listen = "127.0.0.1:0"

[destinations.bitbucket]
networks = ["198.51.100.0/24"]
ports = [22, 443]

[[clients]]
name = "office"
type = "static"
addresses = [{addresses}]
"""


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[Notifier, Callable[[], list[str]]]]:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)

    def received() -> list[str]:
        messages = []
        while True:
            try:
                messages.append(server.recv(65536).decode())
            except BlockingIOError:
                return messages

    yield Notifier({"NOTIFY_SOCKET": str(path)}), received
    server.close()


def write(tmp_path: Path, addresses: str = '"10.20.0.0/16"', on_stop: str = "keep") -> Path:
    path = tmp_path / "repogate.toml"
    state = tmp_path / "state"
    path.write_text(CONFIG.format(state=state, on_stop=on_stop, addresses=addresses))
    return path


def at(delay: float, action: Callable[[], Any]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()
    return timer


def kill(signum: int) -> Callable[[], None]:
    return lambda: os.kill(os.getpid(), signum)


def test_invalid_config_exits_2(tmp_path: Path, kernel: Any) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[agent]\nverify_interval = 'soon'\n")
    assert Daemon(path, backend_factory=lambda: kernel).run() == 2


def test_missing_nftables_exits_1(tmp_path: Path) -> None:
    def unavailable() -> Any:
        raise NftUnavailableError("no bindings")

    assert Daemon(write(tmp_path), backend_factory=unavailable).run() == 1


def test_start_reload_stop(tmp_path: Path, kernel: Any, notify_socket: Any) -> None:
    notifier, received = notify_socket
    path = write(tmp_path)
    daemon = Daemon(path, backend_factory=lambda: kernel, notifier=notifier)

    def change_config() -> None:
        write(tmp_path, addresses='"10.20.0.0/16", "10.30.0.7"')
        os.kill(os.getpid(), signal.SIGHUP)

    at(0.5, change_config)
    at(1.2, lambda: path.write_text("[agent]\nnonsense = 1\n"))
    at(1.3, kill(signal.SIGHUP))  # an invalid config: refused, the old one keeps running
    at(1.8, kill(signal.SIGTERM))
    started = time.monotonic()
    assert daemon.run() == 0
    assert time.monotonic() - started < 10
    messages = received()
    ready = [m for m in messages if m.startswith("READY=1")]
    assert ready[0] == "READY=1\nSTATUS=1 group, 1 entry"
    assert any(m.startswith("RELOADING=1") for m in messages)
    assert any("reload refused" in m for m in messages)
    assert messages[-1] == "STOPPING=1"
    assert kernel.elements("repogate", "client_office_v4_addr") == {"10.30.0.7"}  # reload applied
    reloads = daemon.metrics.registry.get_sample_value
    assert reloads("repogate_config_reloads_total", {"result": "ok"}) == 1
    assert reloads("repogate_config_reloads_total", {"result": "failed"}) == 1
    assert kernel.read_table("repogate") is not None  # on_stop = keep


def test_on_stop_remove_deletes_the_table(tmp_path: Path, kernel: Any) -> None:
    daemon = Daemon(write(tmp_path, on_stop="remove"), backend_factory=lambda: kernel)
    at(0.5, kill(signal.SIGTERM))
    assert daemon.run() == 0
    assert kernel.read_table("repogate") is None


def test_start_does_not_touch_an_enforcing_table(tmp_path: Path, kernel: Any) -> None:
    path = write(tmp_path)
    first = Daemon(path, backend_factory=lambda: kernel)
    at(0.3, kill(signal.SIGTERM))
    assert first.run() == 0
    transactions = len(kernel.transactions)
    second = Daemon(path, backend_factory=lambda: kernel)
    at(0.3, kill(signal.SIGTERM))
    assert second.run() == 0
    assert len(kernel.transactions) == transactions  # nothing to change, nothing sent


def test_drift_is_repaired_by_the_probe(tmp_path: Path, kernel: Any) -> None:
    daemon = Daemon(write(tmp_path), backend_factory=lambda: kernel)

    def delete_by_hand() -> None:  # as `nft delete table`: a commit, a new generation
        kernel.tables.pop("repogate")
        kernel.genid += 1

    at(0.5, delete_by_hand)
    at(3.5, kill(signal.SIGTERM))
    assert daemon.run() == 0
    assert kernel.read_table("repogate") is not None
    assert daemon.publisher.drift_repairs >= 1


def test_metrics_are_served_while_running(tmp_path: Path, kernel: Any) -> None:
    import urllib.request

    daemon = Daemon(write(tmp_path), backend_factory=lambda: kernel)
    scraped: list[str] = []

    def scrape() -> None:
        server = daemon._metrics_server
        assert server is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            scraped.append(r.read().decode())
        os.kill(os.getpid(), signal.SIGTERM)

    at(0.6, scrape)
    assert daemon.run() == 0
    (text,) = scraped
    assert 'repogate_build_info{version="' in text
    assert 'repogate_set_elements{set="client_office_v4_net"} 1.0' in text
    assert 'repogate_group_entries{group="office"} 1.0' in text
    assert 'repogate_reconciles_total{result="ok"}' in text
    assert "repogate_packets_total" in text  # the table's counters, read at scrape time
