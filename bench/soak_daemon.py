"""The soaked daemon: `repogate run` in the soak's namespace, watched from outside.

It runs as the Debian package runs it (bench/daemon.py's INSTALLED_PYTHON and
`python_in`); its log goes to a file line by line as it arrives, and the lines
the soak needs (READY, each transaction's time, warnings and errors) are kept.
Process figures come from /proc (RSS, open descriptors, threads, CPU seconds);
metrics come from a scraper process inside the namespace (bench/daemon.py's
SCRAPER), since the endpoint listens on the namespace's loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.daemon import SCRAPER, cpu_seconds, parse_metrics
from bench.run import INSTALLED_PYTHON, python_in

TRANSACTION = re.compile(r"applied in one transaction in ([0-9.]+) ms")


@dataclass(frozen=True)
class ProcSample:
    """One look at the daemon's process; `t` is seconds since READY."""

    t: float
    rss_kb: int
    fds: int
    threads: int
    cpu_s: float


@dataclass(frozen=True)
class Scrape:
    t: float
    seconds: float  # the GET /metrics, timed inside the namespace
    series: dict[str, float]


class SoakDaemon:
    def __init__(self, ns: str, config: Path, log_path: Path, port: int) -> None:
        self.log_path = log_path
        self.transactions: list[tuple[float, float]] = []  # (time.time(), milliseconds)
        self.complaints: list[str] = []  # warning and error lines
        self.tail: list[str] = []
        self.ready_at = 0.0  # time.time() of the `ready:` line
        self._ready = threading.Event()
        self._log: IO[str] = log_path.open("w")
        self.proc = subprocess.Popen(
            python_in(ns, INSTALLED_PYTHON, "-m", "repogate", "run", "--config", str(config)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches the soak only; it cleans up
        )
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()
        url = f"http://127.0.0.1:{port}/metrics"
        self.scraper = subprocess.Popen(
            python_in(ns, INSTALLED_PYTHON, "-c", SCRAPER, url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.rstrip("\n")
            now = time.time()
            self._log.write(line + "\n")
            self._log.flush()
            self.tail = [*self.tail[-19:], line]
            if (found := TRANSACTION.search(line)) is not None:
                self.transactions.append((now, float(found.group(1))))
            if " warning: " in line or " error: " in line or " critical: " in line:
                self.complaints.append(line[:500])
            if " ready: " in line and not self._ready.is_set():
                self.ready_at = now
                self._ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.failure("did not become READY"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self, what: str) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"exit {code}"
        return f"daemon {what} ({state}); last lines:\n" + "\n".join(self.tail[-10:])

    def sample(self) -> ProcSample:
        pid = self.proc.pid  # `ip netns exec` and `env` exec: this is the daemon itself
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return ProcSample(
            t=time.time() - self.ready_at,
            rss_kb=int(fields["VmRSS"].split()[0]),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            threads=int(fields["Threads"]),
            cpu_s=cpu_seconds(pid),
        )

    def scrape(self) -> Scrape:
        assert self.scraper.stdin is not None and self.scraper.stdout is not None
        self.scraper.stdin.write("\n")
        self.scraper.stdin.flush()
        line = self.scraper.stdout.readline()
        if not line:
            raise RuntimeError(self.failure("metrics scraper ended"))
        answer = json.loads(line)
        t = time.time() - self.ready_at
        return Scrape(t, answer["seconds"], parse_metrics(answer["body"]))

    def stop(self, timeout: float = 60) -> tuple[float, int | None]:
        """SIGTERM; how long until it exited and its exit code (None: it did not)."""
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return time.perf_counter() - started, code

    def close(self) -> None:
        """Kill what is left (the namespace's deletion kills stragglers too)."""
        for proc in (self.scraper, self.proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._reader.join(timeout=5)
        self._log.close()
