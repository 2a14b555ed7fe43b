"""Real daemons (sshd, nginx, fcgiwrap) run in the foreground inside a lab namespace.

`spawn` starts one with `ip netns exec` (which execs, so the pid we hold is the daemon's) in
its own session, its stdout and stderr appended to a log file that every failure quotes.
`wait_accepting` returns once each listener completes a TCP handshake from inside the
namespace: the daemon's own "listening" log line says less (it is written before a worker
is ready, and by some daemons not at all).

Stopping kills the daemon's descendants as well, because sshd's per-connection children call
setsid() and would outlive a signal sent to the process group; they are looked up before the
daemon goes, since its orphans are reparented and then no longer recognisable as its own.
Orphans that die become zombies of init, which this container's init reaps only after
seconds: so sshd's children are stopped first, while sshd itself still reaps them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.netns import in_netns

START_TIMEOUT = 10.0
STOP_TIMEOUT = 2.0
POLL = 0.02
LOG_TAIL = 4000

# Runs inside the namespace: connect to every ADDRESS PORT pair until all accept or time is up.
_CONNECT_ALL = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
pending = list(zip(sys.argv[2::2], map(int, sys.argv[3::2])))
while pending and time.monotonic() < deadline:
    address, port = pending[0]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(0.5)
        try:
            s.connect((address, port))
        except OSError:
            time.sleep(0.02)
            continue
    pending.pop(0)
sys.exit(1 if pending else 0)
"""


@dataclass
class Daemon:
    """One foreground daemon started by `spawn`: its process and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    children_first: bool = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        """The end of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return text[-LOG_TAIL:].strip() or "(empty log)"

    def failure(self, what: str) -> LabError:
        return LabError(f"{self.name} {what}; its log ({self.log_path}):\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the daemon and its descendants; kill whatever ignores that in time.

        With `children_first`, the descendants go first while the daemon still reaps them
        (sshd); otherwise the daemon is trusted to stop its own workers (nginx would respawn
        a worker killed under it). Whatever outlives the daemon (a CGI it was running) is
        killed, and left to init to reap.
        """
        if self.proc.poll() is not None:
            return
        victims = descendants(self.proc.pid)
        deadline = time.monotonic() + timeout
        if self.children_first:
            _signal(victims, signal.SIGTERM)
            while any(_running(pid) for pid in victims):
                if time.monotonic() > deadline:
                    break
                time.sleep(POLL)
        _signal([self.proc.pid], signal.SIGTERM)
        try:
            self.proc.wait(max(deadline - time.monotonic(), POLL))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        _signal(victims, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether pid still runs (a zombie has ended: only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal(pids: Sequence[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def spawn(
    netns: str, name: str, argv: Sequence[str], log_path: Path, *, children_first: bool = False
) -> Daemon:
    """Start argv in netns, in its own session, logging to log_path (appended)."""
    with log_path.open("ab") as log_file:
        try:
            proc = subprocess.Popen(
                in_netns(netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise LabError(f"cannot start {name}: {exc}") from exc
    return Daemon(name, proc, log_path, children_first)


def wait_accepting(
    netns: str,
    daemon: Daemon,
    listen: Sequence[tuple[str, int]],
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until every (address, port) in netns accepts TCP; raise if the daemon dies first."""
    pairs = [str(part) for address, port in listen for part in (address, port)]
    argv = in_netns(netns, [sys.executable, "-c", _CONNECT_ALL, str(timeout), *pairs])
    waiter = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while waiter.poll() is None:
            if not daemon.alive():
                raise daemon.failure(f"exited with status {daemon.proc.returncode}")
            time.sleep(POLL)
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.wait()
    if waiter.returncode != 0:
        shown = ", ".join(f"{address}:{port}" for address, port in listen)
        raise daemon.failure(f"did not accept on all of {shown} within {timeout:g}s")


def wait_until(daemon: Daemon, ready: Path, timeout: float = START_TIMEOUT) -> None:
    """Wait until the file `ready` exists (a unix socket, a pid file), or the daemon dies."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if not daemon.alive():
            raise daemon.failure(f"exited with status {daemon.proc.returncode}")
        if time.monotonic() > deadline:
            raise daemon.failure(f"made no {ready} within {timeout:g}s")
        time.sleep(POLL)


def descendants(pid: int) -> list[int]:
    """Every live process below pid, read from /proc (children before grandchildren)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name may hold spaces and parentheses: fields resume after the last ')'.
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        children = parents.get(queue.pop(0), [])
        found.extend(children)
        queue.extend(children)
    return found


def host_port(address: str, port: int) -> str:
    """`198.51.100.10:22` or `[2001:db8::1]:22`, as sshd, nginx and URLs spell it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
