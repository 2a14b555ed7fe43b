"""DNS benchmark: repogate's resolver and a `type = "dns"` group of 10,000 names, against dig.

Run as root: `.venv/bin/python bench/dns_resolution.py` (`--quick`: (a) and (b) only). A
fresh network namespace gets dnsmasq serving 10,000 names (one A record each; AAAA answers
are NODATA), and everything runs inside it, so nothing on the host is touched and the
namespace is always deleted.

    (a) Resolver.resolve_many over all 10,000 names (A and AAAA: 20,000 queries),
        median of a few runs, on each Python that has dnspython (venv and Debian's);
    (b) dnspython's own resolvers over the same names, in the same run: a thread pool over
        dns.resolver.Resolver (32 and 128 threads), and dns.asyncresolver under
        asyncio.gather (at most 128 at once, a semaphore); each asks A and AAAA per name,
        one socket (a random source port) per query, as repogate's resolver does;
    (c) one `dig` process per name (A and AAAA), as a shell loop would do:
        sequentially over a 500-name subset, and 16 at a time over a 2,000-name subset,
        both extrapolated to 10,000 (running them all would take minutes);
    (d) the full path: `repogate sync` with one DNS group of those 10,000 names into an
        empty namespace (table created), then again (nothing changes). Target: <= 5 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, where this very file
# would shadow dnspython's `dns` package for anything imported below: drop it.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
REPO = HERE.parent
sys.path[:0] = [str(REPO / "agent"), str(REPO)]

import argparse  # noqa: E402 - after the sys.path repair above, on purpose
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from lab.dns import DnsServer, ResolverWorker, numbered_hosts  # noqa: E402
from lab.netns import add_netns, delete_netns  # noqa: E402

NAMES = 10_000
SERVER = "127.0.0.1"
REPEATS = 3
DIG_SEQUENTIAL = 500
DIG_PARALLEL = 2_000
PARALLEL = 16
# dnspython baselines: (label, kind, threads or coroutines at once).
BASELINES = (("threads", 32), ("threads", 128), ("async", 128))
SYNC_TARGET = 5.0
DEBIAN_PYTHON = "/usr/bin/python3"
GROUP = "devices"


def config_text(directory: Path, names: list[str]) -> str:
    listed = ",\n  ".join(json.dumps(name) for name in names)
    return f"""
[agent]
table = "repogate"
state_dir = "{directory}/state"

[resolver]
nameservers = ["{SERVER}"]
timeout = "2s"

[destinations.bitbucket]
networks = ["104.192.136.0/21", "185.166.140.0/22", "2401:1d80:1010::/48"]
ports = [22, 443]

[[clients]]
name = "{GROUP}"
type = "dns"
max_stale = "1h"
names = [
  {listed}
]
"""


def python_version(python: str) -> str | None:
    """'Python 3.11.2, dnspython 2.3.0', or None if that Python has no dnspython."""
    probe = subprocess.run(
        [
            python,
            "-c",
            "import sys, dns.version; print(sys.version.split()[0], dns.version.version)",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    if probe.returncode != 0:
        return None
    interpreter, dnspython = probe.stdout.split()
    return f"Python {interpreter}, dnspython {dnspython}"


def resolver_rate(netns: str, python: str, names: list[str]) -> tuple[float, int]:
    """Median seconds for resolve_many over `names`, and how many were not ok."""
    with ResolverWorker(netns, python=python) as worker:
        runs = []
        failed = 0
        for _ in range(REPEATS):
            reply = worker.call("resolve", nameservers=[SERVER], timeout=2.0, names=names)
            runs.append(float(reply["seconds"]))
            failed = sum(a["outcome"] != "ok" for a in reply["answers"].values())
    return statistics.median(runs), failed


def baseline_rate(netns: str, python: str, names_file: Path, kind: str, width: int) -> Baseline:
    """Median seconds for one of dnspython's own resolvers, run inside the namespace."""
    argv = ["ip", "netns", "exec", netns, python, str(Path(__file__).resolve())]
    argv += ["baseline", kind, str(width), str(names_file)]
    runs = []
    failed = 0
    for _ in range(REPEATS):
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            raise SystemExit(f"baseline {kind} {width} failed:\n{done.stdout}{done.stderr}")
        reply = json.loads(done.stdout)
        runs.append(float(reply["seconds"]))
        failed = int(reply["failed"])
    return Baseline(kind, width, statistics.median(runs), failed)


@dataclass(frozen=True)
class Baseline:
    kind: str  # "threads" or "async"
    width: int  # threads, or coroutines in flight
    seconds: float
    failed: int

    @property
    def label(self) -> str:
        if self.kind == "threads":
            return f"dns.resolver.Resolver in a pool of {self.width} threads"
        return f"dns.asyncresolver, asyncio.gather, {self.width} at once"


def dnspython_baseline(kind: str, width: int, names: Sequence[str]) -> dict[str, Any]:
    """The program half of baseline_rate: resolve A and AAAA of every name with dnspython.

    Names that answer NXDOMAIN or NODATA count as resolved (they are answers); only
    timeouts and errors count as failed, as in (a).
    """
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    def settle(error: Exception | None) -> bool:
        return error is None or isinstance(error, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer)

    if kind == "threads":
        from concurrent.futures import ThreadPoolExecutor

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [SERVER]
        resolver.lifetime = resolver.timeout = 2.0

        def ask(name: str) -> bool:
            ok = True
            for rdtype in ("A", "AAAA"):
                try:
                    resolver.resolve(name, rdtype, search=False)
                except dns.exception.DNSException as exc:
                    ok = ok and settle(exc)
            return ok

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=width) as pool:
            answered = list(pool.map(ask, names))
        return {"seconds": time.perf_counter() - started, "failed": answered.count(False)}

    import asyncio

    async def run_all() -> list[bool]:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [SERVER]
        resolver.lifetime = resolver.timeout = 2.0
        gate = asyncio.Semaphore(width)

        async def ask(name: str, rdtype: str) -> bool:
            async with gate:
                try:
                    await resolver.resolve(name, rdtype, search=False)
                except dns.exception.DNSException as exc:
                    return settle(exc)
                return True

        return await asyncio.gather(*(ask(n, t) for n in names for t in ("A", "AAAA")))

    started = time.perf_counter()
    answered = asyncio.run(run_all())
    seconds = time.perf_counter() - started
    failed = len(
        {
            name
            for name, ok in zip((n for n in names for _ in (0, 1)), answered, strict=True)
            if not ok
        }
    )
    return {"seconds": seconds, "failed": failed}


def dig_rate(netns: str, names: list[str], parallel: int) -> tuple[float, int]:
    with ResolverWorker(netns) as worker:
        reply = worker.call("dig", names=names, server=SERVER, parallel=parallel)
    return float(reply["seconds"]), int(reply["failed"])


def repogate_sync(netns: str, config: Path) -> tuple[float, str]:
    argv = [
        "ip",
        "netns",
        "exec",
        netns,
        "env",
        f"PYTHONPATH={REPO / 'agent'}",
        sys.executable,
        "-m",
        "repogate",
        "sync",
        "--config",
        str(config),
    ]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"repogate sync failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds, done.stdout


def client_elements(netns: str) -> int:
    nft = ["nft", "-j", "list", "set", "inet", "repogate", f"client_{GROUP}_v4_addr"]
    listing = subprocess.run(
        ["ip", "netns", "exec", netns, *nft],
        capture_output=True,
        text=True,
        check=True,
    )
    for item in json.loads(listing.stdout)["nftables"]:
        if "set" in item:
            return len(item["set"].get("elem", []))
    return 0


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["baseline"]:  # the program half of baseline_rate, inside the namespace
        kind, width, names_file = argv[1], int(argv[2]), Path(argv[3])
        names = names_file.read_text().split()
        print(json.dumps(dnspython_baseline(kind, width, names)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="(a) and (b) only: no dig, no sync")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/dns_resolution.py: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    for tool in ("dnsmasq", "dig", "ip", "nft"):
        if shutil.which(tool) is None:
            print(f"bench/dns_resolution.py: {tool} is not installed", file=sys.stderr)
            return 2
    hosts = numbered_hosts(NAMES)
    names = list(hosts)
    netns = f"rgdns{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="repogate-dns-bench-") as tmp:
        work = Path(tmp)
        add_netns(netns)
        try:
            with DnsServer(work / "dns", netns=netns, address=SERVER, ttl=300, hosts=hosts):
                print(
                    f"# dns bench: {NAMES:,} names (one A each, AAAA NODATA) from dnsmasq in "
                    f"namespace {netns}; {os.cpu_count()} CPUs; median of {REPEATS}"
                )
                run(netns, work, names, quick=args.quick)
        finally:
            delete_netns(netns)
    return 0


def run(netns: str, work: Path, names: list[str], *, quick: bool) -> None:
    pythons = [sys.executable]
    if Path(DEBIAN_PYTHON).exists() and Path(DEBIAN_PYTHON).resolve() != Path(sys.executable):
        pythons.append(DEBIAN_PYTHON)
    names_file = work / "names.txt"
    names_file.write_text("\n".join(names) + "\n")
    best = None
    for python in pythons:
        version = python_version(python)
        if version is None:
            continue
        seconds, failed = resolver_rate(netns, python, names)
        best = seconds if best is None else best
        note = f", {failed} not ok" if failed else ""
        print(
            f"(a) repogate Resolver.resolve_many, {NAMES:,} names ({2 * NAMES:,} queries, "
            f"a random source port each): {seconds:.2f} s = {NAMES / seconds:,.0f} names/s "
            f"[{version}]{note}"
        )
        for kind, width in BASELINES:
            base = baseline_rate(netns, python, names_file, kind, width)
            note = f", {base.failed} not ok" if base.failed else ""
            print(
                f"(b) {base.label}: {base.seconds:.2f} s = {NAMES / base.seconds:,.0f} names/s, "
                f"{base.seconds / seconds:.1f}x repogate's time [{version}]{note}"
            )
    assert best is not None, "no Python with dnspython"
    if quick:
        return

    sequential, failed_seq = dig_rate(netns, names[:DIG_SEQUENTIAL], 1)
    sequential_all = sequential * NAMES / DIG_SEQUENTIAL
    print(
        f"(c) dig, one process per name, sequential: {DIG_SEQUENTIAL} names in "
        f"{sequential:.2f} s, extrapolated to {NAMES:,}: {sequential_all:.0f} s = "
        f"{DIG_SEQUENTIAL / sequential:,.0f} names/s; repogate is {sequential_all / best:.0f}x "
        f"faster" + (f" ({failed_seq} dig failures)" if failed_seq else "")
    )
    parallel, failed_par = dig_rate(netns, names[:DIG_PARALLEL], PARALLEL)
    parallel_all = parallel * NAMES / DIG_PARALLEL
    print(
        f"    dig, {PARALLEL} processes at a time: {DIG_PARALLEL:,} names in {parallel:.2f} s, "
        f"extrapolated to {NAMES:,}: {parallel_all:.1f} s = {DIG_PARALLEL / parallel:,.0f} "
        f"names/s; repogate is {parallel_all / best:.1f}x faster"
        + (f" ({failed_par} dig failures)" if failed_par else "")
    )

    config = work / "dns.toml"
    config.write_text(config_text(work, names))
    cold, _output = repogate_sync(netns, config)
    loaded = client_elements(netns)
    again, output = repogate_sync(netns, config)
    verdict = "ok" if cold <= SYNC_TARGET and loaded == NAMES else "MISSED"
    print(
        f"(d) repogate sync, a dns group of {NAMES:,} names, empty namespace -> table created "
        f"with {loaded:,} client addresses: {cold:.2f} s (target <= {SYNC_TARGET:.0f} s: "
        f"{verdict}); again, nothing to change: {again:.2f} s"
    )
    if "in sync" not in output:
        print(f"    second sync was expected to change nothing, it said:\n{output}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
