"""The daemon at 100,000 client addresses, measured through `repogate run` itself.

Run as root: `python3 bench/daemon.py` (also run by `make bench`). Two daemons run
as the Debian package runs them (`/usr/bin/python3 -m repogate run --config X`),
each in its own throwaway network namespace, with default settings except a
`file` client group polled every second (the smallest `interval`) and metrics on
the namespace's loopback. One holds 10,000 client addresses (the baseline), the
other 100,000; every figure at 100,000 is printed beside the same figure at
10,000, measured in the same run, interleaved, so drifting machine load hits both
alike:

- idle CPU: utime + stime from /proc/<pid>/stat over whole windows once the
  daemon is READY and settled, both daemons idle at the same time, beside an
  idle `sleep` (the floor: a process that never runs);
- one metrics scrape: GET /metrics timed by a client inside the namespace;
- a change of 100 addresses: a new list renamed into place (os.replace) until the
  daemon logs the transaction applied. The source's poll wait (the rename until
  the refresh that noticed it started) is subtracted: that refresh's start is
  the daemon's own last-success timestamp minus the refresh duration, both read
  from its metrics. The daemon's work per change is the reconcile duration (and
  the refresh, reading the whole list) from its metrics' sum/count deltas;
- the stop: SIGTERM until the process exits (it must exit 0).

Nothing here asserts a time; the figures and their targets are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.run import INSTALLED_PYTHON, REPEATS, addresses, namespace, python_in  # noqa: E402

SIZES = (10_000, 100_000)
PORT = 10419
SOURCE = "fleet"
TICK = os.sysconf("SC_CLK_TCK")

CONFIG = """
[agent]
table = "repogate"
state_dir = "{state}"

[metrics]
listen = "127.0.0.1:{port}"

[destinations.bitbucket]
networks = ["198.51.100.0/24", "2001:db8:bb::/48"]
ports = [22, 443]

[[clients]]
name = "{source}"
type = "file"
path = "{listing}"
interval = "1s"
"""

# Runs inside the namespace: one GET /metrics per line on stdin, timed here.
SCRAPER = r"""
import json, sys, time, urllib.request
url = sys.argv[1]
for _ in sys.stdin:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    print(json.dumps({"seconds": time.perf_counter() - started, "body": body}), flush=True)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def parse_metrics(body: str) -> dict[str, float]:
    """Prometheus text: series (name and labels, as written) -> value."""
    series = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def write_list(path: Path, entries: list[str]) -> float:
    """Write a new list and rename it into place, as an inventory job would; when."""
    scratch = path.with_suffix(".new")
    scratch.write_text("\n".join(entries) + "\n")
    os.replace(scratch, path)
    return time.time()


class Daemon:
    """One `repogate run` in its own namespace, its log lines read as they arrive."""

    def __init__(self, ns: str, work: Path, size: int) -> None:
        self.size = size
        self.listing = work / f"fleet{size}.txt"
        self.lists = [addresses(size), addresses(size)[100:] + addresses(100, offset=size)]
        write_list(self.listing, self.lists[0])
        config = work / f"daemon{size}.toml"
        config.write_text(
            CONFIG.format(
                state=work / f"state{size}", port=PORT, source=SOURCE, listing=self.listing
            )
        )
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        self.lines: queue.SimpleQueue[tuple[float, str]] = queue.SimpleQueue()
        self.log: list[str] = []
        self.started = time.time()
        self.ready_s = 0.0  # start until the `ready:` line
        self.proc = subprocess.Popen(
            python_in(ns, INSTALLED_PYTHON, "-m", "repogate", "run", "--config", str(config)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.ns = ns
        self.scraper = subprocess.Popen(
            python_in(ns, INSTALLED_PYTHON, "-c", SCRAPER, f"http://127.0.0.1:{PORT}/metrics"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put((time.time(), line.rstrip("\n")))

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = 120) -> float:
        """When the first line `wanted` accepts arrived (lines before it are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                tail = "\n".join(self.log[-5:])
                raise RuntimeError(f"daemon {self.size:,}: no such line; last:\n{tail}") from None
            self.log.append(line)
            if wanted(line):
                return at

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def scrape(self) -> tuple[float, dict[str, float]]:
        assert self.scraper.stdin is not None and self.scraper.stdout is not None
        self.scraper.stdin.write("\n")
        self.scraper.stdin.flush()
        answer = json.loads(self.scraper.stdout.readline())
        return answer["seconds"], parse_metrics(answer["body"])

    def settle(self, quiet: float = 0.02, window: float = 2.0, limit: float = 60) -> float:
        """Wait until a `window` costs under `quiet` CPU seconds; return how long it took."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            before = self.cpu()
            time.sleep(window)
            if self.cpu() - before < quiet:
                break
        return time.monotonic() - started

    def change(self, i: int) -> dict[str, float]:
        """Swap 100 addresses; time it through the daemon (see the module doc)."""
        quote = f'{{source="{SOURCE}"}}'
        _, before = self.scrape()
        renamed = write_list(self.listing, self.lists[(i + 1) % 2])
        self.wait_for(lambda line: f"(reason: refresh {SOURCE})" in line and "added 100 " in line)
        applied = self.wait_for(lambda line: "applied in one transaction" in line)
        _, after = self.scrape()

        def delta(name: str) -> tuple[float, float]:
            return after[f"{name}_sum"] - before[f"{name}_sum"], after[f"{name}_count"] - before[
                f"{name}_count"
            ]

        reconcile, reconciles = delta("repogate_reconcile_duration_seconds")
        refresh_sum = after[f"repogate_source_refresh_duration_seconds_sum{quote}"]
        refresh_count = after[f"repogate_source_refresh_duration_seconds_count{quote}"]
        refresh = refresh_sum - before[f"repogate_source_refresh_duration_seconds_sum{quote}"]
        refreshes = refresh_count - before[f"repogate_source_refresh_duration_seconds_count{quote}"]
        if reconciles != 1 or refreshes != 1:
            raise RuntimeError(f"expected one refresh and one reconcile: {refreshes} {reconciles}")
        refresh_started = after[f"repogate_source_last_success_timestamp_seconds{quote}"] - refresh
        return {
            "from_rename_s": applied - renamed,
            "poll_wait_s": refresh_started - renamed,
            "from_refresh_s": applied - refresh_started,
            "refresh_s": refresh,
            "reconcile_s": reconcile,
        }

    def repair(self) -> tuple[float, float]:
        """A foreign element added by `nft`: the daemon re-reads the whole table (the
        verify it also runs every 10 x verify_interval) and deletes it. Its CPU seconds
        for that, and the time from `nft` returning until the repair is logged."""
        element = f"11.{self.size >> 16 & 255}.0.1"  # outside every list here
        cpu = self.cpu()
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "nft",
                "add",
                "element",
                "inet",
                "repogate",
                f"client_{SOURCE}_v4_addr",
                f"{{ {element} }}",
            ],
            check=True,
        )
        added = time.time()
        repaired = self.wait_for(lambda line: "drift in table" in line and element in line)
        self.wait_for(lambda line: "applied in one transaction" in line)
        self.settle()
        return self.cpu() - cpu, repaired - added

    def stop(self) -> tuple[float, int]:
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        return time.perf_counter() - started, code

    def close(self) -> None:
        for proc in (self.scraper, self.proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextmanager
def running(work: Path, size: int) -> Iterator[Daemon]:
    with namespace() as ns:
        daemon = Daemon(ns, work, size)
        try:
            yield daemon
        finally:
            daemon.close()


def idle(daemons: list[Daemon], seconds: float, windows: int) -> dict[int, list[float]]:
    """CPU share of one core of each daemon (and, under key 0, of `sleep`) per window."""
    shares: dict[int, list[float]] = {0: [], **{d.size: [] for d in daemons}}
    sleeper = subprocess.Popen(["sleep", str(int(seconds * windows) + 60)])
    try:
        for _ in range(windows):
            pids = {0: sleeper.pid, **{d.size: d.proc.pid for d in daemons}}
            before = {key: cpu_seconds(pid) for key, pid in pids.items()}
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            for key, pid in pids.items():
                shares[key].append((cpu_seconds(pid) - before[key]) / elapsed)
    finally:
        sleeper.kill()
        sleeper.wait()
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--idle-windows", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--changes", type=int, default=REPEATS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces and nftables)", file=sys.stderr)
        return 2
    subprocess.run(
        [INSTALLED_PYTHON, "-m", "compileall", "-q", str(REPO / "agent" / "repogate")], check=True
    )
    print(
        f"# the daemon: `{INSTALLED_PYTHON} -m repogate run`, a file group polled every 1 s, "
        f"verify_interval 30 s (default); {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory(prefix="repogate-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        daemons = [stack.enter_context(running(work, size)) for size in SIZES]
        small, large = daemons
        for d in daemons:
            ready = d.wait_for(lambda line: " ready: " in line)
            d.ready_s = ready - d.started
        settled = {d.size: d.settle() for d in daemons}
        print(
            f"start until READY: {large.ready_s:.2f} s at 100,000, "
            f"{small.ready_s:.2f} s at 10,000; "
            f"then settled (under 20 ms CPU in 2 s) after {settled[large.size]:.0f} s "
            f"and {settled[small.size]:.0f} s"
        )

        shares = idle(daemons, args.idle_seconds, args.idle_windows)
        big, base, floor = (statistics.median(shares[k]) for k in (large.size, small.size, 0))
        runs = " ".join(f"{s * 100:.3f}" for s in shares[large.size])
        print(
            f"idle CPU over {args.idle_seconds:.0f} s at 100,000: {big * 100:.3f} % of a core "
            f"(target <= 2 %); at 10,000: {base * 100:.3f} %; ratio "
            f"{big / base if base else float('inf'):.2f}; idle `sleep`: {floor * 100:.3f} % "
            f"[windows at 100,000: {runs}; median of {args.idle_windows}]"
        )

        scrape: dict[int, list[float]] = {d.size: [] for d in daemons}
        for _ in range(args.scrapes):
            for d in daemons:
                scrape[d.size].append(d.scrape()[0])
        s_large, s_small = (statistics.median(scrape[d.size]) for d in (large, small))
        print(
            f"one metrics scrape at 100,000: {s_large * 1000:.1f} ms (target <= 100 ms); "
            f"at 10,000: {s_small * 1000:.1f} ms; ratio {s_large / s_small:.2f} "
            f"[median of {args.scrapes}]"
        )

        changes: dict[int, list[dict[str, float]]] = {d.size: [] for d in daemons}
        for i in range(args.changes):
            for d in daemons:
                changes[d.size].append(d.change(i))
                time.sleep(0.3)

        def med(size: int, key: str) -> float:
            return statistics.median(c[key] for c in changes[size])

        l_refresh, s_refresh = med(large.size, "from_refresh_s"), med(small.size, "from_refresh_s")
        print(
            f"change 100 of 100,000 through the daemon, rename until applied less the poll "
            f"wait: {l_refresh * 1000:.0f} ms; at 10,000: {s_refresh * 1000:.0f} ms; "
            f"ratio {l_refresh / s_refresh:.2f} (target <= 2) [median of {args.changes}]"
        )
        print(
            f"  rename until applied: {med(large.size, 'from_rename_s') * 1000:.0f} ms and "
            f"{med(small.size, 'from_rename_s') * 1000:.0f} ms, of which the poll wait "
            f"{med(large.size, 'poll_wait_s') * 1000:.0f} ms and "
            f"{med(small.size, 'poll_wait_s') * 1000:.0f} ms (the 1 s interval's phase)"
        )
        l_rec, s_rec = med(large.size, "reconcile_s"), med(small.size, "reconcile_s")
        print(
            f"  the daemon's reconcile per change at 100,000: {l_rec * 1000:.1f} ms "
            f"(target <= 50 ms); at 10,000: {s_rec * 1000:.1f} ms; ratio {l_rec / s_rec:.2f}"
        )
        l_ref, s_ref = med(large.size, "refresh_s"), med(small.size, "refresh_s")
        print(
            f"  the refresh before it (read and parse the whole list): {l_ref * 1000:.1f} ms "
            f"at 100,000, {s_ref * 1000:.1f} ms at 10,000; ratio {l_ref / s_ref:.2f}"
        )

        repairs: dict[int, list[tuple[float, float]]] = {d.size: [] for d in daemons}
        for _ in range(3):
            for d in daemons:
                repairs[d.size].append(d.repair())
        r_large, r_small = (statistics.median(r[0] for r in repairs[d.size]) for d in daemons[::-1])
        lag = statistics.median(r[1] for r in repairs[large.size])
        print(
            f"one full verify (a foreign element repaired: re-read, diff, delete) at 100,000: "
            f"{r_large:.2f} CPU s, seen and repaired {lag:.2f} s after `nft` returned; "
            f"at 10,000: {r_small:.2f} CPU s; run only when something changed the table "
            "(never on a timer) [median of 3]"
        )

        stops = {d.size: d.stop() for d in daemons}
        print(
            "stop on SIGTERM: "
            + ", ".join(
                f"{stops[d.size][0]:.2f} s at {d.size:,} (exit {stops[d.size][1]})"
                for d in reversed(daemons)
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
