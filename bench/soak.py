"""The soak: the real daemon for 30 minutes under churn, watched for leaks and drift.

Run as root: `.venv/bin/python bench/soak.py [--minutes N]` (`make soak`). One
throwaway network namespace holds everything: dnsmasq serving 10,000 DDNS names
(lab.dns.DnsServer, TTL 60 s), `repogate run` as the Debian package runs it
(bench/daemon.py's way) with a `file` group of 100,000 client addresses and
1,000 networks and a `dns` group of those names, and a scraper of its metrics.
Every minute 1 % of the file's addresses and networks are replaced (45 s into
the minute) and 1 % of the names move to new addresses (at 15 s); /proc is read
every second and the metrics every 15 s. After the last minute the soak waits
until each source has refreshed from a start after its last change and the
reconciler is idle, then reads the owned table once with `nft -j` and compares
every client set with the content the churn says it must have.

Printed: a markdown block for docs/benchmarks.md (bench/soak_report.py says how
each figure is taken); written: build/soak.json and the daemon's log
build/soak-daemon.log. Exit 1 if RSS grew more than 10 % after the warm-up (5.5
min of 30, past the daemon's first full verify; see default_warmup), descriptors
or threads grew, a final set differs, a reconcile failed or SIGTERM did not end
the daemon with 0; 2 on bad arguments; 130 when interrupted (SIGINT, SIGTERM,
SIGHUP). The namespace and every process in it go on any exit.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

# This file's directory must not come first on sys.path (bench/ has modules named like
# top-level ones); the repository and its agent/ do.
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path[:0] = [str(REPO / "agent"), str(REPO)]

from bench.run import INSTALLED_PYTHON  # noqa: E402
from bench.soak_daemon import Scrape, SoakDaemon  # noqa: E402
from bench.soak_load import DDNS, FLEET, Load, compare, config_text, kernel_sets  # noqa: E402
from bench.soak_report import Gathered, failures, markdown, summarise  # noqa: E402
from lab.dns import DnsServer  # noqa: E402
from lab.netns import (  # noqa: E402
    add_address,
    add_default_route,
    add_netns,
    add_veth,
    delete_netns,
    link_up,
)

PORT = 10413
UPLINK = "up0"
NAMESERVER = "127.0.0.1"
TTL = 60  # a DDNS-like TTL; the group's min_refresh (30 s) is below it
FILES_AT, DNS_AT = 45, 15  # seconds into each minute (DNS first: its TTL delays the end)
READY_TIMEOUT = 300.0
CONVERGE_TIMEOUT = 240.0
MIN_WARMUP = 90.0  # one churn of each source applied (files at 45 s, DNS by about 80 s)
QUIET = 5  # seconds without a reconcile: the reconciler is idle


class SoakInterruptedError(Exception):
    """SIGINT, SIGTERM or SIGHUP: unwind, cleaning up on the way."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise SoakInterruptedError(signal.Signals(signum).name)


class Refreshes:
    """When each source's latest refresh started, from its metrics (last success less
    that refresh's duration, the histogram's sum and count deltas)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.started: dict[str, float] = {}
        self._previous: dict[str, float] = {}

    def see(self, scrape: Scrape) -> None:
        for key in self.keys:
            label = f'{{source="{key}"}}'
            count = scrape.series.get(f"repogate_source_refresh_duration_seconds_count{label}", 0)
            total = scrape.series.get(f"repogate_source_refresh_duration_seconds_sum{label}", 0)
            done = scrape.series.get(f"repogate_source_last_success_timestamp_seconds{label}", 0)
            old_count = self._previous.get(f"{key} count", 0.0)
            if count > old_count:
                took = (total - self._previous.get(f"{key} sum", 0.0)) / (count - old_count)
                self.started[key] = done - took
            self._previous |= {f"{key} count": count, f"{key} sum": total}


def converge(daemon: SoakDaemon, refreshes: Refreshes, after: dict[str, float]) -> float | None:
    """Wait until each source refreshed from a start after `after[key]` and the
    reconciler has been quiet for QUIET s; seconds waited, None on timeout."""
    started = time.monotonic()
    quiet_since, count = time.monotonic(), -1.0
    while time.monotonic() - started < CONVERGE_TIMEOUT:
        time.sleep(1)
        scrape = daemon.scrape()
        refreshes.see(scrape)
        now = scrape.series.get("repogate_reconcile_duration_seconds_count", 0.0)
        if now != count:
            quiet_since, count = time.monotonic(), now
        fresh = all(refreshes.started.get(k, 0.0) >= t for k, t in after.items())
        if fresh and time.monotonic() - quiet_since >= QUIET:
            return time.monotonic() - started
    return None


def uplink(ns: str) -> None:
    """An uplink (a veth pair with both ends inside: the kernel here has no dummy
    links) with documentation addresses and default routes, so the daemon's egress
    check finds a way out and its log holds no warning the soak did not cause."""
    add_veth(ns, UPLINK, ns, f"{UPLINK}peer")
    link_up(ns, f"{UPLINK}peer")
    link_up(ns, UPLINK)
    for address, gateway in (
        ("192.0.2.1/24", "192.0.2.254"),
        ("2001:db8:5::1/64", "2001:db8:5::fe"),
    ):
        add_address(ns, UPLINK, address)
        add_default_route(ns, gateway)


def default_warmup(run_s: float) -> float:
    """A sixth of the run, but past the first churn of each source (the first file
    change alone adds 10 % to RSS: its reconcile's peak). A short run (a smoke test)
    warms up for half its length, since RSS still climbs a few MB with each of the
    first file changes."""
    if run_s < 6 * MIN_WARMUP:
        return max(run_s / 2, MIN_WARMUP)
    return run_s / 6


def soak(args: argparse.Namespace, log_path: Path) -> Gathered:
    minutes, warmup = float(args.minutes), float(args.warmup_s)
    ns = f"rgs{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="repogate-soak-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        add_netns(ns)
        stack.callback(delete_netns, ns)  # kills whatever is left inside, then deletes
        uplink(ns)
        load = Load(work)
        load.write_listing()
        dns = stack.enter_context(
            DnsServer(work / "dns", netns=ns, address=NAMESERVER, ttl=TTL, hosts=load.hosts())
        )
        config = work / "soak.toml"
        config.write_text(config_text(load, work / "state", PORT, NAMESERVER))
        launched = time.time()
        daemon = SoakDaemon(ns, config, log_path, PORT)
        stack.callback(daemon.close)
        daemon.wait_ready(READY_TIMEOUT)
        print(f"soak: READY after {daemon.ready_at - launched:.1f} s; {minutes:g} min from now")

        refreshes = Refreshes((FLEET, DDNS))
        samples, scrapes = [], []
        changed = {FLEET: 0.0, DDNS: 0.0}
        end = round(minutes * 60)
        for second in range(end + 1):
            time.sleep(max(0.0, daemon.ready_at + second - time.time()))
            if not daemon.alive():
                raise RuntimeError(daemon.failure("ended during the soak"))
            samples.append(daemon.sample())
            if second % args.scrape_every == 0 or second == end:
                scrapes.append(daemon.scrape())
                refreshes.see(scrapes[-1])
            if second == end:
                break
            if second % 60 == FILES_AT:
                load.churn_listing()
                changed[FLEET] = time.time()
            elif second % 60 == DNS_AT:
                dns.set_hosts(load.churn_ddns())
                changed[DDNS] = time.time() + TTL  # names answered before it expire by then
            if second % 60 == 0 and second:
                s = samples[-1]
                print(
                    f"soak: {second // 60} min: RSS {s.rss_kb / 1024:.0f} MB, {s.fds} fds, "
                    f"{s.threads} threads, {s.cpu_s:.0f} CPU s",
                    flush=True,
                )

        converged = converge(daemon, refreshes, changed)
        checks = compare(load.expected(), kernel_sets(ns))
        stop_s, stop_code = daemon.stop()
        daemon.close()
        ready = daemon.ready_at
        return Gathered(
            minutes=minutes,
            warmup_s=warmup,
            churn={
                "clients": load.clients,
                "networks": load.networks,
                "names": load.names,
                "share": load.share,
                "ttl": TTL,
                "scrape_every": args.scrape_every,
                "seed": load.seed,
            },
            samples=samples,
            scrapes=scrapes,
            transactions_ms=[(at - ready, ms) for at, ms in daemon.transactions],
            complaints=daemon.complaints,
            checks=checks,
            converged_s=converged,
            stop_s=stop_s,
            stop_code=stop_code,
            ready_s=ready - launched,
            refresh_jobs=len(refreshes.keys),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument(
        "--warmup-minutes", type=float, default=None, help="default: see default_warmup"
    )
    parser.add_argument("--scrape-every", type=int, default=15, help="seconds")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "soak.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces and nftables)", file=sys.stderr)
        return 2
    for tool in ("dnsmasq", "nft", "ip"):
        if shutil.which(tool) is None:
            print(f"soak: {tool} is not installed", file=sys.stderr)
            return 2
    run_s = args.minutes * 60
    warmup = default_warmup(run_s) if args.warmup_minutes is None else args.warmup_minutes * 60
    if warmup + 60 > run_s:
        print(
            f"soak: the warm-up ends at {warmup / 60:g} min, leaving no minute to measure: "
            f"run at least {warmup / 60 + 1:g} min",
            file=sys.stderr,
        )
        return 2
    args.warmup_s = warmup
    subprocess.run(
        [INSTALLED_PYTHON, "-m", "compileall", "-q", str(REPO / "agent" / "repogate")], check=True
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.json.with_name("soak-daemon.log")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        gathered = soak(args, log_path)
    except SoakInterruptedError as exc:
        print(f"soak: interrupted by {exc}; namespace and processes removed", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, signal.default_int_handler)  # nothing left to clean up
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    summary = summarise(gathered)
    found = failures(summary, gathered.checks)
    summary["failures"] = found
    args.json.write_text(json.dumps(summary, indent=1) + "\n")
    command = "make soak" if args.minutes == 30 else f"bench/soak.py --minutes {args.minutes:g}"
    print(markdown(summary, command))
    print(f"\nsoak: summary in {args.json}, the daemon's log in {log_path}")
    for line in found:
        print(f"soak: FAILED: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
