"""End to end: `repogate run`, the daemon, in the lab's gateway, with real processes and TCP.

The daemon runs as a long-lived subprocess in the gateway namespace, exactly as systemd would
run it: `$NOTIFY_SOCKET` points at a datagram socket the test reads (READY=1, RELOADING=1,
STOPPING=1, WATCHDOG=1, with the time each arrived), it logs to stderr, and it is driven with
signals. What is asserted is what clients see on the wire (banner read or prompt reset), what
the kernel holds (`nft list`, `nft monitor`), and what the daemon says (notify, log lines).

The continuity test is the point of it all: approved and unapproved clients connect in a
tight background loop (`lab.loop`) while the daemon is started, reloaded, SIGKILLed,
restarted and stopped, and not a single attempt may have the wrong outcome.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab.config import merge, office_group
from lab.loop import Attempt, RunningLoop, summarize
from lab.probe import REFUSED, ProbeResult, format_results
from lab.topology import Lab, TargetRef

pytestmark = pytest.mark.root

# Short intervals keep the whole file well under a minute: a full re-read of the table every
# 3.5 s (the cheap probe for a deleted table or flushed rules runs every 2 s regardless).
# Not 3 s: the periodic verify and the probe would then fire together 6 s after start, and
# the daemon crashes when they do (test_verify_and_probe_may_run_at_the_same_time); 3.5 s
# puts the first collision at 14 s, past every daemon's lifetime here, so each test tests
# its own subject.
FAST: dict[str, Any] = {"agent": {"verify_interval": "3.5s"}}
# How long the daemon needs to have run for its first cheap probe (2 s) to have acted.
PAST_FIRST_PROBE = 2.8
PROTECTED: list[TargetRef] = [("bitbucket", 22), ("bitbucket", 443), ("altssh", 443)]
SSH_HTTPS: list[TargetRef] = [("bitbucket", 22), ("bitbucket", 443)]
TIMEOUT = 2.0  # per probe connection
FAST_RESET = 0.5  # a reset from repogate comes back in milliseconds
READY_WITHIN = 10.0  # generous for a loaded machine; the measured start-up is reported
BOB, BOB_NEIGHBOUR = "10.30.0.7", "10.30.0.8"  # both live in bob's namespace
OFFICE_WITHOUT_BOB = ["10.20.0.0/16", "2001:db8:20::/48"]


# -- the systemd side: a notify socket ---------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One datagram the daemon sent, when it arrived, and its position in the stream."""

    index: int
    at: float  # time.monotonic() on arrival
    fields: Mapping[str, str]

    def has(self, assignment: str) -> bool:
        """True if the datagram carries `KEY=VALUE` (e.g. `READY=1`)."""
        key, _, value = assignment.partition("=")
        return self.fields.get(key) == value


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET.

    A path socket (not an abstract one) because abstract names are per network namespace and
    the daemon runs in the gateway's. A thread receives every datagram as it arrives and
    stamps it, so tests can reason about when READY=1 came relative to what they observed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[Notification] = []
        self._changed = threading.Condition()
        self._closing = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        os.chmod(path, 0o666)  # the daemon runs as root here, but a service might not
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closing:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            fields = dict(
                line.partition("=")[::2] for line in data.decode(errors="replace").splitlines()
            )
            with self._changed:
                self.messages.append(Notification(len(self.messages), at, fields))
                self._changed.notify_all()

    def mark(self) -> int:
        """The index the next datagram will get: pass it as `after` to wait for news."""
        with self._changed:
            return len(self.messages)

    def find(self, assignment: str, after: int = 0) -> Notification | None:
        """The first datagram at or after index `after` carrying `assignment`."""
        with self._changed:
            return next((m for m in self.messages[after:] if m.has(assignment)), None)

    def all(self, assignment: str, after: int = 0) -> list[Notification]:
        """Every datagram at or after index `after` carrying `assignment`."""
        with self._changed:
            return [m for m in self.messages[after:] if m.has(assignment)]

    def wait(self, timeout: float) -> None:
        """Sleep until a datagram arrives or `timeout` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def close(self) -> None:
        self._closing = True
        self._thread.join(timeout=2)
        self._sock.close()

    def describe(self) -> str:
        with self._changed:
            return "\n".join(
                f"  #{m.index} " + " ".join(f"{k}={v}" for k, v in m.fields.items())
                for m in self.messages
            )


# -- the daemon process ------------------------------------------------------------------------


@dataclass
class Daemon:
    """One `repogate run` in the gateway: its process, notify socket and stderr log."""

    proc: subprocess.Popen[bytes]
    notify: NotifySocket
    log_path: Path
    started: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def context(self) -> str:
        """Everything worth printing when an assertion about the daemon fails."""
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return (
            f"daemon pid {self.proc.pid} {state}\nnotifications:\n{self.notify.describe()}\n"
            f"log:\n{self.log()}"
        )

    def wait_for(self, assignment: str, *, after: int = 0, timeout: float = 5.0) -> Notification:
        """Wait for a datagram carrying `assignment`; fail at once if the daemon exits."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.notify.find(assignment, after)
            if found is not None:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited before sending {assignment}\n{self.context()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {assignment} within {timeout:g}s\n{self.context()}")
            self.notify.wait(min(remaining, 0.05))

    def wait_ready(self, timeout: float = READY_WITHIN) -> Notification:
        return self.wait_for("READY=1", timeout=timeout)

    def send(self, signum: signal.Signals) -> int:
        """Send a signal; return the notify mark from just before, for `wait_for(after=)`."""
        mark = self.notify.mark()
        self.proc.send_signal(signum)
        return mark

    def reload(self, timeout: float = 5.0) -> tuple[Notification, Notification]:
        """SIGHUP, then wait for RELOADING=1 and the READY=1 that follows it."""
        mark = self.send(signal.SIGHUP)
        reloading = self.wait_for("RELOADING=1", after=mark, timeout=timeout)
        ready = self.wait_for("READY=1", after=reloading.index, timeout=timeout)
        return reloading, ready

    def wait_exit(self, timeout: float = 5.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon still running {timeout:g}s later\n{self.context()}")

    def running(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, grace: float = 3.0) -> None:
        """Cleanup: SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)


# Variables a test run might inherit that would change how the daemon behaves.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS")

StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(lab: Lab) -> Iterator[StartDaemon]:
    """Start `repogate run --config <lab config>` in the gateway; always stopped afterwards."""
    started: list[Daemon] = []
    scratch: list[Path] = []

    def start(
        extra_env: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
    ) -> Daemon:
        """`argv` replaces `repogate run`'s (e.g. to wrap it in setpriv inside the gateway)."""
        # Short: unix socket paths are limited to 107 bytes, pytest's tmp_path can be long.
        directory = Path(tempfile.mkdtemp(prefix="rgd-"))
        scratch.append(directory)
        notify = NotifySocket(directory / "notify")
        env = {k: v for k, v in lab.env().items() if k not in _SYSTEMD_ENV}
        env["NOTIFY_SOCKET"] = str(notify.path)
        env.update(extra_env or {})
        log_path = directory / "daemon.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                list(argv) if argv is not None else lab.repogate_argv("run"),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches pytest, which then cleans up
            )
        daemon = Daemon(proc, notify, log_path, time.monotonic())
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.terminate()
            daemon.notify.close()
        for directory in scratch:
            shutil.rmtree(directory, ignore_errors=True)


StartLoop = Callable[..., RunningLoop]


@pytest.fixture
def start_loop(lab: Lab) -> Iterator[StartLoop]:
    """Start a background connection loop in a client namespace; always killed afterwards."""
    loops: list[RunningLoop] = []

    def start(client: str, targets: Iterable[TargetRef], **options: Any) -> RunningLoop:
        running = lab.start_loop(client, targets, **options)
        loops.append(running)
        return running

    try:
        yield start
    finally:
        for running in loops:
            running.kill()


# -- the lab state each test starts from ------------------------------------------------------


def configure(lab: Lab, overrides: Mapping[str, Any] | None = None) -> None:
    """Write the lab config with the short test intervals and `overrides` on top."""
    lab.write_config(merge(FAST, overrides))


@pytest.fixture
def daemon_lab(bare_lab: Lab) -> Lab:
    """No repogate table, the fast config, and an empty state_dir (no last known good)."""
    configure(bare_lab)
    for entry in bare_lab.state_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return bare_lab


def sync(lab: Lab) -> None:
    result = lab.repogate("sync")
    assert result.returncode == 0, f"repogate sync failed:\n{result.stdout}\n{result.stderr}"


def stateless_table(lab: Lab) -> str | None:
    """`nft -s list table` (no counters, so two listings compare), or None if it is missing."""
    proc = lab.nft("-s", "list", "table", "inet", lab.table, check=False)
    return proc.stdout if proc.returncode == 0 else None


# -- what clients see -------------------------------------------------------------------------


def not_connected(results: Sequence[ProbeResult]) -> list[ProbeResult]:
    return [r for r in results if not r.connected]


def not_refused_fast(results: Sequence[ProbeResult]) -> list[ProbeResult]:
    return [r for r in results if r.result != REFUSED or r.elapsed >= FAST_RESET]


def check_enforcing(
    lab: Lab,
    *,
    allowed: Sequence[tuple[str, str | None]] = (("alice", None), ("bob", BOB)),
    refused: Sequence[tuple[str, str | None]] = (("mallory", None), ("bob", BOB_NEIGHBOUR)),
    targets: Sequence[TargetRef] = PROTECTED,
) -> list[str]:
    """Probe (client, source) pairs in parallel; return what went wrong, [] when all is well."""
    running = [
        (want, lab.start_probe(client, targets, timeout=TIMEOUT, source=source))
        for want, pairs in (("allowed", allowed), ("refused", refused))
        for client, source in pairs
    ]
    problems: list[ProbeResult] = []
    for want, probe in running:
        results = probe.collect()
        problems += not_connected(results) if want == "allowed" else not_refused_fast(results)
    return format_results(problems).splitlines()


def scrape_metrics(lab: Lab) -> str:
    """The daemon's /metrics, fetched inside the gateway (it listens on its loopback)."""
    script = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:10419/metrics', timeout=5).read().decode())"
    )
    return lab.exec("gw", [lab.python, "-c", script]).stdout


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
    """Poll `predicate`; return the seconds it took to hold, or None if it never did."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(step)


# -- nft monitor ---------------------------------------------------------------------------------


class NftMonitor:
    """`nft monitor` in the gateway, fenced by sentinel tables so no event is missed.

    The start fence proves the monitor is listening before anything happens; the end fence
    proves every earlier event has been written out before the capture is read.
    """

    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab = lab
        self.output = directory / f"monitor-{secrets.token_hex(3)}.log"
        self.fence = f"rgfence{secrets.token_hex(3)}"
        self._handle: Any = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NftMonitor:
        self._handle = self.output.open("wb")
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.gw, "nft", "monitor"],
            stdout=self._handle,
            stderr=subprocess.STDOUT,
        )
        try:
            self._put_fence("start")
        except BaseException:
            self.__exit__(AssertionError, None, None)
            raise
        return self

    def _put_fence(self, which: str) -> None:
        table = f"{self.fence}_{which}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.lab.nft("add", "table", "ip", table)
            self.lab.nft("delete", "table", "ip", table)
            time.sleep(0.05)
            if f"delete table ip {table}" in self.output.read_text():
                return
        raise AssertionError(f"nft monitor never showed the {which} fence")

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._put_fence("end")
        finally:
            assert self._process is not None
            self._process.terminate()
            self._process.wait(timeout=5)
            self._handle.close()

    def events(self) -> list[str]:
        """Events between the fences: no fences, no `# new generation` or `W:` notes."""
        lines = self.output.read_text().splitlines()
        start = max(i for i, line in enumerate(lines) if f"{self.fence}_start" in line)
        ends = [i for i, line in enumerate(lines) if f"{self.fence}_end" in line]
        body = lines[start + 1 : ends[0] if ends else None]
        return [
            line.strip()
            for line in body
            if line.strip() and not line.startswith("#") and not line.startswith("W:")
        ]


# -- tests -------------------------------------------------------------------------------------


def test_invalid_config_at_start_exits_2_and_changes_nothing(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    sync(lab)
    before = stateless_table(lab)
    bad = office_group(["10.20.0.0/16", "10.0.0.999"])
    configure(lab, {"clients": [bad], "agent": {"verify_interval": "soon"}})
    daemon = start_daemon()
    assert daemon.wait_exit(10) == 2, daemon.context()
    log = daemon.log()
    assert "clients[0].addresses[1]" in log, log
    assert "agent.verify_interval" in log, log
    assert not daemon.notify.all("READY=1"), daemon.context()
    assert stateless_table(lab) == before


def test_ready_only_once_the_table_enforces(daemon_lab: Lab, start_daemon: StartDaemon) -> None:
    lab = daemon_lab
    assert stateless_table(lab) is None
    daemon = start_daemon()
    ready = daemon.wait_ready()
    # Straight after READY=1, with no waiting: the table must already be there and working.
    listing = stateless_table(lab)
    problems = check_enforcing(lab)
    assert listing is not None, f"READY=1 sent but no table\n{daemon.context()}"
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    assert ready.fields.get("STATUS") == "1 group, 3 entries", daemon.context()
    assert "ready: 1 group, 3 entries" in daemon.log()
    print(f"\nstart-up: READY=1 {ready.at - daemon.started:.2f}s after exec")
    # Without WATCHDOG_USEC there is nobody to ping.
    time.sleep(0.6)
    assert not daemon.notify.all("WATCHDOG=1"), daemon.context()


def test_watchdog_pings_keep_coming(daemon_lab: Lab, start_daemon: StartDaemon) -> None:
    daemon = start_daemon({"WATCHDOG_USEC": "1000000"})  # WatchdogSec=1s: ping every 0.5 s
    ready = daemon.wait_ready()
    time.sleep(2.2)
    pings = daemon.notify.all("WATCHDOG=1", after=ready.index)
    assert len(pings) >= 4, daemon.context()
    gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
    gaps.insert(0, pings[0].at - ready.at)
    # systemd kills the service when a whole WatchdogSec passes without a ping.
    assert max(gaps) < 0.9, f"gaps {[round(g, 3) for g in gaps]}\n{daemon.context()}"
    print(f"\nwatchdog: {len(pings)} pings, gaps {min(gaps):.3f}-{max(gaps):.3f}s")


def test_start_on_existing_table_touches_nothing_then_only_the_difference(
    daemon_lab: Lab, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    lab = daemon_lab
    sync(lab)
    # Each capture lasts past the daemon's first cheap probe: a table made by `repogate sync`
    # must not look drifted to the daemon (that would rewrite the rules).
    with NftMonitor(lab, tmp_path) as monitor:
        daemon = start_daemon()
        daemon.wait_ready()
        time.sleep(max(0.0, daemon.started + PAST_FIRST_PROBE - time.monotonic()))
    assert monitor.events() == [], "\n".join(monitor.events()) + "\n" + daemon.context()
    assert "drift" not in daemon.log(), daemon.context()
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.context()

    # The same start with one address swapped: exactly one delete and one add, no flush.
    swapped = office_group([*OFFICE_WITHOUT_BOB, BOB_NEIGHBOUR])
    configure(lab, {"clients": [swapped]})
    with NftMonitor(lab, tmp_path) as monitor:
        daemon = start_daemon()
        daemon.wait_ready()
        time.sleep(max(0.0, daemon.started + PAST_FIRST_PROBE - time.monotonic()))
    expected = [
        f"add element inet {lab.table} client_office_v4_addr {{ {BOB_NEIGHBOUR} }}",
        f"delete element inet {lab.table} client_office_v4_addr {{ {BOB} }}",
    ]
    assert sorted(monitor.events()) == expected, (
        "\n".join(monitor.events()) + "\n" + daemon.context()
    )
    assert (
        f"set client_office_v4_addr added 1 [{BOB_NEIGHBOUR}] removed 1 [{BOB}] (reason: start)"
        in daemon.log()
    ), daemon.context()


def test_sighup_applies_a_changed_config(
    daemon_lab: Lab, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    lab = daemon_lab
    daemon = start_daemon()
    daemon.wait_ready()
    assert not check_enforcing(lab), daemon.context()

    configure(lab, {"clients": [office_group(OFFICE_WITHOUT_BOB)]})
    with NftMonitor(lab, tmp_path) as monitor:
        reloading, ready = daemon.reload()
    # Exactly the one element that changed, nothing recreated.
    assert monitor.events() == [
        f"delete element inet {lab.table} client_office_v4_addr {{ {BOB} }}"
    ], "\n".join(monitor.events()) + "\n" + daemon.context()
    assert "MONOTONIC_USEC" in reloading.fields, daemon.context()
    # Applied by the time READY=1 says so: bob's address is refused at once.
    problems = check_enforcing(
        lab, allowed=[("alice", None)], refused=[("mallory", None), ("bob", BOB)]
    )
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    assert ready.fields.get("STATUS") == "1 group, 2 entries", daemon.context()

    # A rule narrowing office to SSH: 443 closes for alice, 22 stays open.
    rule = {"clients": ["office"], "destinations": ["bitbucket"], "ports": [22]}
    configure(lab, {"clients": [office_group(OFFICE_WITHOUT_BOB)], "rules": [rule]})
    daemon.reload()
    ssh = check_enforcing(lab, allowed=[("alice", None)], refused=[], targets=[("bitbucket", 22)])
    https = check_enforcing(
        lab, allowed=[], refused=[("alice", None)], targets=[("bitbucket", 443), ("altssh", 443)]
    )
    assert not ssh + https, "\n".join(ssh + https) + "\n" + daemon.context()
    log = daemon.log()
    assert log.count(f"reloaded {lab.config_path}") == 2, log
    assert "rules rewritten" in log, log
    assert daemon.running()


def test_sighup_with_an_invalid_config_keeps_the_running_one(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    daemon = start_daemon()
    daemon.wait_ready()
    before = stateless_table(lab)

    bad = office_group([*OFFICE_WITHOUT_BOB, "bogus"])
    configure(lab, {"clients": [bad], "agent": {"verify_interval": "soon"}})
    _reloading, ready = daemon.reload()
    assert "reload refused" in ready.fields.get("STATUS", ""), daemon.context()
    time.sleep(0.3)
    assert daemon.running(), daemon.context()
    assert stateless_table(lab) == before
    # bob's address, dropped by the refused file, is still admitted: the old config runs.
    problems = check_enforcing(lab)
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    log = daemon.log()
    assert "clients[0].addresses[2]" in log and "'bogus'" in log, log
    assert "agent.verify_interval" in log, log
    assert "reload refused: keeping the running config" in log, log

    # Fixed, it is taken at the next SIGHUP.
    configure(lab, {"clients": [office_group(OFFICE_WITHOUT_BOB)]})
    daemon.reload()
    problems = check_enforcing(lab, allowed=[("alice", None)], refused=[("bob", BOB)])
    assert not problems, "\n".join(problems) + "\n" + daemon.context()


@pytest.mark.parametrize(
    ("drift", "found"),
    [
        (["delete", "table", "inet", "repogate"], "table inet repogate was deleted"),
        (["flush", "chain", "inet", "repogate", "gate"], "inet repogate"),
    ],
    ids=["table-deleted", "gate-flushed"],
)
def test_drift_is_repaired_within_seconds(
    daemon_lab: Lab, start_daemon: StartDaemon, drift: list[str], found: str
) -> None:
    lab = daemon_lab
    assert lab.table == "repogate"  # the parameters name it
    daemon = start_daemon()
    daemon.wait_ready()
    good = stateless_table(lab)
    assert good is not None

    lab.nft(*drift)  # repaired so fast that the next listing may already be whole again
    said = wait_until(lambda: "drift in table inet repogate" in daemon.log(), timeout=6.0)
    assert said is not None, f"no drift logged in 6 s\n{daemon.context()}"
    took = wait_until(lambda: stateless_table(lab) == good, timeout=6.0)
    assert took is not None, f"not repaired in 6 s:\n{stateless_table(lab)}\n{daemon.context()}"
    assert said + took < 5.0, f"repaired only after {said + took:.1f}s\n{daemon.context()}"
    problems = check_enforcing(lab)
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    log = daemon.log()
    assert "drift in table inet repogate" in log and found in log, log
    assert "repaired" in log, log
    print(f"\n{' '.join(drift)}: repaired after {said + took:.2f}s")


def test_sigterm_leaves_the_rules_enforcing(daemon_lab: Lab, start_daemon: StartDaemon) -> None:
    lab = daemon_lab
    daemon = start_daemon()
    daemon.wait_ready()
    mark = daemon.send(signal.SIGTERM)
    asked = time.monotonic()
    code = daemon.wait_exit(5.0)
    took = time.monotonic() - asked
    assert code == 0, daemon.context()
    assert daemon.notify.find("STOPPING=1", after=mark) is not None, daemon.context()
    assert stateless_table(lab) is not None, daemon.context()
    problems = check_enforcing(lab)
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    assert "stays in force" in daemon.log(), daemon.context()
    print(f"\nSIGTERM: exit 0 after {took:.2f}s")


def test_on_stop_remove_deletes_the_table(daemon_lab: Lab, start_daemon: StartDaemon) -> None:
    lab = daemon_lab
    configure(lab, {"agent": {"on_stop": "remove"}})
    daemon = start_daemon()
    daemon.wait_ready()
    assert stateless_table(lab) is not None
    mark = daemon.send(signal.SIGINT)  # Ctrl-C by hand: the same clean stop as SIGTERM
    assert daemon.wait_exit(5.0) == 0, daemon.context()
    assert daemon.notify.find("STOPPING=1", after=mark) is not None, daemon.context()
    assert stateless_table(lab) is None, daemon.context()
    # The gate is open: mallory reaches Bitbucket again.
    problems = check_enforcing(lab, allowed=[("alice", None), ("mallory", None)], refused=[])
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    assert "on_stop = remove" in daemon.log(), daemon.context()


@dataclass
class Timeline:
    """What the test did when (monotonic), to place the loops' attempts in phases."""

    events: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        self.events.append((name, time.monotonic()))

    def phases(self, end: float) -> list[tuple[str, float, float]]:
        bounds = [*self.events, ("end", end)]
        return [(name, start, stop) for (name, start), (_, stop) in itertools.pairwise(bounds)]


def phase_table(timeline: Timeline, loops: Mapping[str, Sequence[Attempt]], end: float) -> str:
    """One line per phase with each loop's attempt count in it."""
    lines = []
    for name, start, stop in timeline.phases(end):
        counts = ", ".join(
            f"{client} {sum(start <= a.mono < stop for a in attempts)}"
            for client, attempts in loops.items()
        )
        lines.append(f"  {name:<34} {stop - start:5.2f}s  {counts}")
    return "\n".join(lines)


def test_loop_sees_a_refusal_window_of_a_fraction_of_a_second(
    daemon_lab: Lab, start_loop: StartLoop
) -> None:
    # The instrument first: a loop must catch a short outage, or "zero refusals" means nothing.
    lab = daemon_lab
    sync(lab)
    alice = start_loop("alice", [("bitbucket", 22)])
    alice.wait_running()
    configure(lab, {"clients": [office_group([BOB])]})  # alice is no longer approved
    revoked = time.monotonic()
    sync(lab)
    configure(lab)
    sync(lab)
    restored = time.monotonic()
    time.sleep(0.3)
    attempts = alice.stop()
    refused = [a for a in attempts if a.result == REFUSED]
    assert refused, summarize(attempts)
    assert all(revoked <= a.mono <= restored for a in refused), summarize(attempts)
    assert attempts[-1].connected, summarize(attempts)
    print(f"\nloop over a {restored - revoked:.2f}s revocation: {summarize(attempts)}")


def test_continuity_through_start_reload_kill_restart_stop(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop
) -> None:
    lab = daemon_lab
    sync(lab)
    # alice: bitbucket 22 and 443 over IPv4 and IPv6 (4 targets); mallory the same.
    alice = start_loop("alice", SSH_HTTPS)
    mallory = start_loop("mallory", SSH_HTTPS)
    alice.wait_running()
    mallory.wait_running()
    timeline = Timeline()
    hold = 0.7  # time spent in each phase, long enough for ~20 rounds of each loop

    timeline.mark("synced, no daemon")
    time.sleep(hold)
    first = start_daemon()
    timeline.mark("daemon starting")
    first.wait_ready()
    timeline.mark("daemon ready")
    time.sleep(hold)

    # Equivalent: the same addresses in another order.
    configure(lab, {"clients": [office_group(["10.30.0.7", "2001:db8:20::/48", "10.20.0.0/16"])]})
    timeline.mark("SIGHUP, equivalent config")
    first.reload()
    time.sleep(hold)

    # Changed but still approving alice: bob moves to a new group (new sets, rules rewritten).
    vpn = {"name": "vpn", "type": "static", "addresses": [BOB_NEIGHBOUR]}
    configure(lab, {"clients": [office_group(OFFICE_WITHOUT_BOB), vpn]})
    timeline.mark("SIGHUP, changed config")
    first.reload()
    time.sleep(hold)

    timeline.mark("SIGKILL, daemon down")
    first.proc.kill()
    assert first.wait_exit() == -signal.SIGKILL
    time.sleep(1.0)

    second = start_daemon()
    timeline.mark("daemon restarting")
    second.wait_ready()
    timeline.mark("restarted, ready")
    time.sleep(hold)

    mark = second.send(signal.SIGTERM)
    timeline.mark("SIGTERM, stopped")
    assert second.wait_exit() == 0, second.context()
    assert second.notify.find("STOPPING=1", after=mark) is not None
    time.sleep(1.0)

    alice_attempts = alice.stop()
    mallory_attempts = mallory.stop()
    end = time.monotonic()
    origin = timeline.events[0][1]
    table = phase_table(timeline, {"alice": alice_attempts, "mallory": mallory_attempts}, end)
    report = (
        f"alice   {summarize(alice_attempts)}\n"
        f"mallory {summarize(mallory_attempts)}\n"
        f"phases (attempts per loop):\n{table}"
    )
    print("\ncontinuity:\n" + report)

    alice_bad = [a for a in alice_attempts if not a.connected]
    mallory_bad = [a for a in mallory_attempts if a.result != REFUSED or a.elapsed >= FAST_RESET]
    shown = "\n".join(a.describe(origin) for a in (alice_bad + mallory_bad)[:20])
    assert not alice_bad and not mallory_bad, (
        f"{report}\nwrong outcomes:\n{shown}\n{first.context()}\n{second.context()}"
    )
    assert len(alice_attempts) > 100 and len(mallory_attempts) > 100, report
    # Every phase, including the one with no daemon at all, was actually exercised.
    for name, start, stop in timeline.phases(end):
        for attempts in (alice_attempts, mallory_attempts):
            assert sum(start <= a.mono < stop for a in attempts) >= 4, f"{name}\n{report}"
    # bob's neighbour address was admitted by the changed config, and still is.
    problems = check_enforcing(
        lab, allowed=[("alice", None), ("bob", BOB_NEIGHBOUR)], refused=[("bob", BOB)]
    )
    assert not problems, "\n".join(problems)


def write_atomically(path: Path, text: str) -> None:
    """Write like an MDM export should: a temp file renamed over the list."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    temp.replace(path)


def test_file_group_follows_its_file_and_survives_losing_it(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    laptops = lab.workdir / "laptops.txt"
    write_atomically(laptops, f"# exported by the MDM\n{BOB}\n")
    group = {"name": "laptops", "type": "file", "path": str(laptops), "interval": "1s"}
    configure(lab, {"clients": [office_group(OFFICE_WITHOUT_BOB), group]})
    bob_only = {"allowed": [("bob", BOB)], "refused": [("bob", BOB_NEIGHBOUR)]}
    neighbour_only = {"allowed": [("bob", BOB_NEIGHBOUR)], "refused": [("bob", BOB)]}
    ssh: list[TargetRef] = [("bitbucket", 22)]

    daemon = start_daemon()
    daemon.wait_ready()
    problems = check_enforcing(lab, targets=ssh, **bob_only)
    assert not problems, "\n".join(problems) + "\n" + daemon.context()

    # Swap the address in the file: the daemon notices within its 1 s interval.
    write_atomically(laptops, f"# exported by the MDM\n{BOB_NEIGHBOUR}\n")
    took = wait_until(lambda: not check_enforcing(lab, targets=ssh, **neighbour_only), 6.0)
    assert took is not None, daemon.context()
    assert took < 3.5, f"file change applied only after {took:.1f}s\n{daemon.context()}"
    assert (
        f"set client_laptops_v4_addr added 1 [{BOB_NEIGHBOUR}] removed 1 [{BOB}]" in daemon.log()
    ), daemon.context()

    # The file disappears: the group keeps its last known good entries, and says so.
    laptops.unlink()
    logged = wait_until(lambda: "source laptops failed" in daemon.log(), 4.0)
    assert logged is not None, daemon.context()
    time.sleep(0.5)  # let the reconcile the failure triggered run
    problems = check_enforcing(lab, targets=ssh, **neighbour_only)
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    assert daemon.running()
    mark = daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.context()
    assert daemon.notify.find("STOPPING=1", after=mark)
    state = json.loads((lab.state_dir / "state.json").read_text())
    assert state["groups"]["laptops"]["addresses_v4"].split() == [BOB_NEIGHBOUR], state

    # Restart with the file still missing and the table gone: only state_dir remembers.
    lab.nft("delete", "table", "inet", lab.table)
    restarted = start_daemon()
    ready = restarted.wait_ready()
    problems = check_enforcing(lab, targets=ssh, **neighbour_only)
    assert not problems, "\n".join(problems) + "\n" + restarted.context()
    assert "stale: laptops" in ready.fields.get("STATUS", ""), restarted.context()
    assert "source laptops failed" in restarted.log(), restarted.context()

    # The file comes back: the group follows it again.
    write_atomically(laptops, f"{BOB}\n")
    took = wait_until(lambda: not check_enforcing(lab, targets=ssh, **bob_only), 6.0)
    assert took is not None and took < 3.5, restarted.context()
    assert "source laptops recovered" in restarted.log(), restarted.context()


# -- regressions: bugs these tests found ---------------------------------------------


def test_verify_and_probe_may_run_at_the_same_time(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    # A big set makes the periodic verify's read take long enough that the probe, due at
    # the same instant when verify_interval is 1 s, always overlaps it.
    inventory = lab.workdir / "inventory.txt"
    inventory.write_text("".join(f"10.40.{i // 256}.{i % 256}\n" for i in range(20000)))
    group = {"name": "inventory", "type": "file", "path": str(inventory), "interval": "1h"}
    configure(
        lab,
        {"agent": {"verify_interval": "1s"}, "clients": [office_group(OFFICE_WITHOUT_BOB), group]},
    )
    daemon = start_daemon()
    ready = daemon.wait_ready(timeout=20)
    wait_until(lambda: not daemon.running(), timeout=max(0.0, ready.at + 4.0 - time.monotonic()))
    assert daemon.running(), daemon.context()
    trouble = [
        line
        for line in daemon.log().splitlines()
        if "failed" in line or "kernel ABI" in line or "Fatal" in line
    ]
    assert not trouble, daemon.context()


def test_reload_with_a_new_table_name_leaves_one_table(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    daemon = start_daemon()
    daemon.wait_ready()
    renamed = {
        "agent": {"table": "gate2"},
        "clients": [office_group([*OFFICE_WITHOUT_BOB, BOB_NEIGHBOUR])],
    }
    configure(lab, renamed)
    try:
        daemon.reload()
        time.sleep(0.3)
        listed = lab.nft("list", "tables", "inet").stdout.split()
        tables = {word for word in listed if word not in ("table", "inet")}
        log = daemon.log()
        if "reload refused" in log:
            # Refusing to rename a live table (restart instead) would be fine too.
            assert tables == {"repogate"}, daemon.context()
        else:
            assert tables == {"gate2"}, f"tables {sorted(tables)}\n{daemon.context()}"
            assert "was deleted" not in log, daemon.context()
            problems = check_enforcing(
                lab, allowed=[("bob", BOB_NEIGHBOUR)], refused=[("bob", BOB)], targets=SSH_HTTPS
            )
            assert not problems, "\n".join(problems) + "\n" + daemon.context()
    finally:
        daemon.terminate()
        lab.nft("delete", "table", "inet", "gate2", check=False)
