"""What bench/peers.py's peers share: namespaces, an `nft monitor` that judges every
transaction, a logged child process, and the stand-in publisher.

The monitor is the one judge for every peer and for the `nft -f` floor alike. It runs
`nft monitor` (text mode: only it prints `# new generation N`, the end of each committed
transaction) in the peer's namespace, replays the element events of one set into a model
of its content, and at each generation that touched the set records whether the content
then equalled the one before the change being measured, the one expected after it, or
neither (a mixed or partial state a packet could meet): only that, so a peer making
10,000 transactions costs no copies of the set. A measurement reads how many transactions
changed the set, how many of them left it mixed, and when the new content was complete. Timestamps
are taken as each line arrives (`stdbuf -oL`, so nft does not hold them in a buffer).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lab.netns import add_netns, delete_netns, new_tag  # noqa: E402

DEBIAN_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
_ELEMENT = re.compile(r"^(add|delete) element (\S+) (\S+) (\S+) \{ (.*) \}$")
_FLUSH = re.compile(r"^flush set (\S+) (\S+) (\S+)$")


def spread_addresses(count: int, offset: int = 0) -> list[str]:
    """Distinct IPv4 addresses in 10.0.0.0/8, every other one, so none are adjacent.

    Adjacent single addresses could be merged into ranges by a peer that collapses them,
    and the set would then hold other elements than the ones published.
    """
    out = []
    for i in range(offset, offset + count):
        n = 2 * i + 1
        out.append(f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}")
    return out


@contextlib.contextmanager
def namespace(role: str) -> Iterator[str]:
    """A fresh lab namespace (`rg<hex>-<role>`, so the lab's leak check knows it)."""
    name = f"{new_tag()}-{role}"
    add_netns(name)
    try:
        yield name
    finally:
        delete_netns(name)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass(frozen=True)
class Transaction:
    at: float  # time.time() when its `# new generation` line arrived
    is_old: bool  # the set after it held what it held when the change was expected
    is_new: bool  # ... or exactly the expected content


@dataclass(frozen=True)
class Outcome:
    """One change as the kernel went through it."""

    done_at: float  # the transaction that completed the new content
    transactions: int  # transactions that changed the set, from the mark to done
    mixed: int  # of them, those leaving neither the old nor the new content


class Monitor:
    """`nft monitor` in `ns`, modelling the content of set `family table name`."""

    def __init__(self, ns: str, family: str, table: str, name: str) -> None:
        self.key = (family, table, name)
        self.ns = ns
        self.content: set[str] = set()
        self.touched = False
        self.log: list[Transaction] = []
        self.old: frozenset[str] = frozenset()
        self.new: frozenset[str] = frozenset()
        self.cond = threading.Condition()
        self._seen: set[str] = set()
        self.proc = subprocess.Popen(
            in_ns(ns, "stdbuf", "-oL", "nft", "monitor"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        # nft prints nothing once subscribed: a probe table, until reported, proves it is.
        for attempt in range(100):
            probe = f"peersprobe{os.getpid()}x{attempt}"
            for verb in ("add", "delete"):
                subprocess.run(in_ns(ns, "nft", verb, "table", "ip", probe), check=True)
            gone = f"delete table ip {probe}"
            with self.cond:
                if self.cond.wait_for(lambda: gone in self._seen, 0.1):  # noqa: B023 - used at once
                    return
        raise RuntimeError("nft monitor never reported a probe table")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            at, line = time.time(), raw.rstrip("\n")
            with self.cond:
                if line.startswith("# new generation"):
                    if self.touched:
                        is_old, is_new = self.content == self.old, self.content == self.new
                        self.log.append(Transaction(at, is_old, is_new))
                        self.touched = False
                    self.cond.notify_all()
                    continue
                if line.startswith(("add table", "delete table")):
                    self._seen.add(line)
                    self.cond.notify_all()
                self._apply(line)

    def _apply(self, line: str) -> None:
        element = _ELEMENT.match(line)
        if element is not None and element.group(2, 3, 4) == self.key:
            items = {item.strip().split()[0] for item in element.group(5).split(",")}
            if element.group(1) == "add":
                self.content |= items
            else:
                self.content -= items
            self.touched = True
        flush = _FLUSH.match(line)
        if flush is not None and flush.group(1, 2, 3) == self.key:
            self.content.clear()
            self.touched = True
        if line == f"delete table {self.key[0]} {self.key[1]}":
            self.content.clear()
            self.touched = True

    def expect(self, new: frozenset[str]) -> tuple[int, frozenset[str]]:
        """Before a change to `new`: where the log stands, and what the set holds now."""
        with self.cond:
            self.old, self.new = frozenset(self.content), new
            return len(self.log), self.old

    def wait(self, mark: tuple[int, frozenset[str]], timeout: float) -> Outcome:
        """Block until a transaction after `mark` leaves the set holding what `expect` said."""
        start = mark[0]
        new = self.new

        def done() -> int | None:
            for i in range(start, len(self.log)):
                if self.log[i].is_new:
                    return i
            return None

        with self.cond:
            if not self.cond.wait_for(lambda: done() is not None, timeout):
                have = len(self.content)
                raise RuntimeError(
                    f"{self.ns}: the set never held the {len(new):,} expected addresses "
                    f"in {timeout:.0f} s (it holds {have:,}; {len(new - self.content):,} "
                    f"missing, {len(self.content - new):,} extra)"
                )
            end = done()
            assert end is not None
            steps = self.log[start : end + 1]
        mixed = sum(not (t.is_old or t.is_new) for t in steps)
        return Outcome(steps[-1].at, len(steps), mixed)

    def settled(self, quiet: float = 1.0, limit: float = 60) -> None:
        """Wait until no transaction has touched the set for `quiet` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            count = len(self.log)
            time.sleep(quiet)
            if len(self.log) == count:
                return

    def close(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """End a child this benchmark started (by its own pid, never by name)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Child:
    """A peer's process, its output lines kept as they arrive (for errors and readiness)."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.started = time.time()
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.tail: list[str] = []
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, wanted: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(self.failure("no such line")) from None
            self.tail = [*self.tail[-19:], line]
            if wanted(line):
                return line

    def drain(self) -> list[str]:
        """The last lines it printed, up to now."""
        while not self.lines.empty():
            self.tail = [*self.tail[-19:], self.lines.get()]
        return self.tail

    def failure(self, what: str) -> str:
        self.drain()
        code = self.proc.poll()
        state = "running" if code is None else f"exited {code}"
        return f"{what} ({state}); last lines:\n  " + "\n  ".join(self.tail[-8:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(self.failure("peer died"))

    def close(self, sig: int = signal.SIGTERM) -> None:
        stop(self.proc, sig)


class StandIn:
    """bench/peers_standin.py in `ns`: publish a list, learn when a path first served it."""

    def __init__(self, ns: str, port: int, key: str) -> None:
        script = str(REPO / "bench" / "peers_standin.py")
        self.proc = subprocess.Popen(
            in_ns(ns, DEBIAN_PYTHON, script, str(port), key),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: queue.SimpleQueue[dict[str, object]] = queue.SimpleQueue()
        self.served: dict[tuple[str, int], float] = {}
        self.version = 0
        threading.Thread(target=self._read, daemon=True).start()
        self._expect(lambda e: "listening" in e)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def _expect(self, wanted: Callable[[dict[str, object]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("stand-in publisher: no answer") from None
            if "served" in event:
                key = (str(event["served"]), int(str(event["version"])))
                self.served[key] = float(str(event["at"]))
            if wanted(event):
                return

    def publish(self, addresses: Sequence[str]) -> int:
        self.version += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"publish": list(addresses), "version": self.version}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        version = self.version
        self._expect(lambda e: e.get("published") == version)
        return version

    def served_at(self, path: str, version: int, timeout: float = 60) -> float:
        """When `path` first served `version` (waiting for it if need be)."""
        if (path, version) not in self.served:
            self._expect(lambda e: e.get("served") == path and e.get("version") == version, timeout)
        return self.served[(path, version)]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop(self.proc)
