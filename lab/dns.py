"""A real DNS server for tests and benchmarks, and a way to ask it from inside its namespace.

`DnsServer` runs dnsmasq in a network namespace (or on the host's loopback): it serves A and
AAAA records from a hosts-style file it re-reads on SIGHUP (so a name can move while it runs),
fixed `--host-record`s and `--cname`s, answers NXDOMAIN for unknown names under its domain
(`--local`), truncates big answers over UDP and answers them over TCP. TTLs are short (2 s by
default) so tests can watch names expire. It can be stopped (a dead resolver: ICMP port
unreachable) or paused with SIGSTOP (a silent one: timeouts), and it is always cleaned up.

`ResolverWorker` runs repogate's resolver and DNS sources in a Python process inside the
namespace (`python -m lab.dns worker`), driven by one JSON request per line on stdin: sockets
belong to the namespace of the process that opens them, so the test process cannot simply
call the resolver itself.

Run as a module (`python -m lab.dns`), never as a script: `python lab/dns.py` would put lab/
first on sys.path, where this file would shadow dnspython's `dns` package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab.errors import LabError
from lab.managed import Managed
from lab.netns import in_netns

REPO = Path(__file__).resolve().parents[1]
DNSMASQ = "dnsmasq"
START_TIMEOUT = 5.0
DEFAULT_DOMAIN = "lab.test"


@dataclass(frozen=True)
class Cname:
    """An alias served with `--cname=alias,target[,ttl]` (the target must be local)."""

    alias: str
    target: str
    ttl: int | None = None


@dataclass(frozen=True)
class HostRecord:
    """A fixed record with its own TTL (`--host-record`); cannot change while running."""

    name: str
    addresses: tuple[str, ...]
    ttl: int | None = None


@dataclass
class DnsServer(Managed):
    """dnsmasq serving `hosts` (name -> addresses, changeable), `records` and `cnames`."""

    workdir: Path
    netns: str | None = None  # None: run in the caller's namespace
    address: str = "127.0.0.1"
    port: int = 53
    ttl: int = 2  # --local-ttl: the TTL of every hosts-file answer
    negative_ttl: int | None = None  # --neg-ttl; None: the same as ttl
    domain: str | None = DEFAULT_DOMAIN  # --local=/domain/: unknown names are NXDOMAIN
    hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    records: Sequence[HostRecord] = ()
    cnames: Sequence[Cname] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def hosts_file(self) -> Path:
        return self.workdir / "dns-hosts"

    @property
    def log_file(self) -> Path:
        return self.workdir / "dnsmasq.log"

    def argv(self) -> list[str]:
        argv = [
            DNSMASQ,
            "--no-daemon",  # foreground, no pid file, no user change, TCP in-process
            "--conf-file=/dev/null",  # never the host's /etc/dnsmasq.conf
            "--log-facility=-",  # stderr only, not the host's syslog
            "--no-resolv",
            "--no-hosts",
            f"--port={self.port}",
            f"--listen-address={self.address}",
            "--bind-interfaces",
            f"--local-ttl={self.ttl}",
            f"--neg-ttl={self.ttl if self.negative_ttl is None else self.negative_ttl}",
            f"--auth-ttl={self.ttl}",
            f"--addn-hosts={self.hosts_file}",
        ]
        if self.domain:
            argv.append(f"--local=/{self.domain}/")
        for record in self.records:
            ttl = [] if record.ttl is None else [str(record.ttl)]
            argv.append("--host-record=" + ",".join([record.name, *record.addresses, *ttl]))
        for cname in self.cnames:
            ttl = [] if cname.ttl is None else [str(cname.ttl)]
            argv.append("--cname=" + ",".join([cname.alias, cname.target, *ttl]))
        return argv

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if shutil.which(DNSMASQ) is None:
            raise LabError("dnsmasq is not installed (apt install dnsmasq-base)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        argv = self.argv()
        if self.netns is not None:
            argv = in_netns(self.netns, argv)
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for_reads(1)

    def stop(self) -> None:
        """End dnsmasq: its port is closed, so queries get ICMP port unreachable."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def pause(self) -> None:
        """Freeze dnsmasq (SIGSTOP): its port stays open and nothing answers (timeouts)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # -- records -------------------------------------------------------------------------

    def set_hosts(self, changes: Mapping[str, Sequence[str]]) -> None:
        """Give names new addresses (an empty list removes a name: NXDOMAIN) and reload."""
        for name, addresses in changes.items():
            if addresses:
                self.hosts[name] = tuple(addresses)
            else:
                self.hosts.pop(name, None)
        self.reload()

    def reload(self) -> None:
        """Rewrite the hosts file and make dnsmasq re-read it (SIGHUP); wait until it has."""
        self._write_hosts()
        if not self.running:
            return
        before = self._reads()
        self._signal(signal.SIGHUP)
        self._wait_for_reads(before + 1)

    def _write_hosts(self) -> None:
        lines = [
            f"{address} {name}\n" for name, addresses in self.hosts.items() for address in addresses
        ]
        temporary = self.hosts_file.with_suffix(".tmp")
        temporary.write_text("".join(lines))
        temporary.replace(self.hosts_file)  # dnsmasq never reads half a file

    def _signal(self, signum: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            raise LabError("dnsmasq is not running")
        # `ip netns exec` execs dnsmasq, so the child's pid is dnsmasq's.
        self.process.send_signal(signum)

    def _reads(self) -> int:
        """How often dnsmasq has logged reading the hosts file (at start and per SIGHUP)."""
        return self.log().count(f"read {self.hosts_file} - ")

    def _wait_for_reads(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._reads() >= count:
                return
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"dnsmasq exited {self.process.returncode}:\n{self.log()}")
            time.sleep(0.01)
        raise LabError(f"dnsmasq did not read {self.hosts_file} in time:\n{self.log()}")


def numbered_hosts(count: int, domain: str = DEFAULT_DOMAIN) -> dict[str, tuple[str, ...]]:
    """`count` names `h<i>.<domain>`, each with one distinct address in 10.0.0.0/8."""
    return {
        f"h{i}.{domain}": (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",)
        for i in range(count)
    }


# -- the resolver, driven inside a namespace ----------------------------------------------------


class ResolverWorker:
    """A `python -m lab.dns worker` process inside `netns`, asked one JSON request at a time.

    Requests (`op` and its fields) and replies:

        resolve  nameservers, port, timeout, names[, concurrency]
                 -> seconds, answers {name: {addresses, ttl, outcome, lookups}}
        source   id, kind ("dns" | "hosts"), names, nameservers, port, timeout, and the
                 group's or destination's settings (min_refresh, max_refresh, max_addresses,
                 max_stale, linger) -> {}
        fetch    id -> addresses, refresh_in, outcomes, seconds, error (SourceError text)
        dig      server, port, names, parallel -> seconds, failed: one `dig` process per
                 name (A and AAAA), `parallel` at a time: the baseline benchmarks compare to
    """

    def __init__(self, netns: str | None, *, python: str = sys.executable) -> None:
        argv = [
            "env",
            f"PYTHONPATH={REPO / 'agent'}{os.pathsep}{REPO}",
            python,
            "-m",
            "lab.dns",
            "worker",
        ]
        if netns is not None:
            argv = in_netns(netns, argv)
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps({"op": op, **fields}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise LabError(f"resolver worker exited ({self.process.wait()}) during {op}")
        reply: dict[str, Any] = json.loads(line)
        if "crash" in reply:
            raise LabError(f"resolver worker failed on {op}: {reply['crash']}")
        return reply

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        if self.process.stdin is None or self.process.stdout is None:
            raise LabError("resolver worker has no pipes")
        return self.process.stdin, self.process.stdout

    def close(self) -> None:
        if self.process.poll() is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ResolverWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker() -> None:
    """The program half: imports repogate here, so the host half needs nothing from it."""
    # Imported here: the lab's host half stays free of repogate and dnspython.
    from repogate.config.schema import Destination, DnsClients  # noqa: PLC0415
    from repogate.errors import SourceError  # noqa: PLC0415
    from repogate.sources.dns import DnsSource, HostsSource  # noqa: PLC0415
    from repogate.sources.resolver import Answer, Resolver  # noqa: PLC0415

    sources: dict[str, DnsSource | HostsSource] = {}

    def resolver_of(request: Mapping[str, Any]) -> Resolver:
        resolver = Resolver(
            request.get("nameservers", ()),
            port=int(request.get("port", 53)),
            timeout=float(request.get("timeout", 1.0)),
        )
        if "concurrency" in request:
            resolver.concurrency = int(request["concurrency"])
        return resolver

    def answer_json(answer: Answer) -> dict[str, Any]:
        return {
            "addresses": list(answer.addresses),
            "ttl": answer.ttl,
            "outcome": answer.outcome,
            "lookups": {
                kind: {"outcome": lookup.outcome, "addresses": list(lookup.addresses)}
                | {"ttl": lookup.ttl}
                for kind, lookup in answer.lookups.items()
            },
        }

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "resolve":
            resolver = resolver_of(request)
            started = time.perf_counter()
            answers = resolver.resolve_many(request["names"])
            seconds = time.perf_counter() - started
            return {
                "seconds": seconds,
                "answers": {name: answer_json(answer) for name, answer in answers.items()},
            }
        if op == "source":
            names = tuple(request["names"])
            settings = {
                key: request[key] for key in ("min_refresh", "max_refresh") if key in request
            }
            if request.get("kind", "dns") == "hosts":
                destination = Destination(
                    "dest",
                    (),
                    (443,),
                    hosts=names,
                    linger=request.get("linger", 3600.0),
                    **settings,
                )
                sources[request["id"]] = HostsSource(destination, resolver_of(request))
            else:
                group = DnsClients(
                    "group", names, max_addresses=request.get("max_addresses", 8), **settings
                )
                max_stale = float(request.get("max_stale", 86400.0))
                sources[request["id"]] = DnsSource(group, resolver_of(request), max_stale=max_stale)
            return {}
        if op == "fetch":
            source = sources[request["id"]]
            started = time.perf_counter()
            try:
                result = source.fetch()
            except SourceError as exc:
                return {
                    "error": str(exc),
                    "seconds": time.perf_counter() - started,
                    "outcomes": source.last_outcomes,
                }
            entries = result.entries
            return {
                "error": None,
                "seconds": time.perf_counter() - started,
                "addresses": sorted(entries.addresses_v4) + sorted(entries.addresses_v6),
                "refresh_in": result.refresh_in,
                "outcomes": source.last_outcomes,
                "rejected": result.rejected_count,
            }
        if op == "dig":
            return _dig_many(
                request["names"],
                request["server"],
                int(request.get("port", 53)),
                int(request.get("parallel", 1)),
            )
        raise ValueError(f"unknown op {op!r}")

    for line in sys.stdin:
        try:
            reply = handle(json.loads(line))
        except Exception as exc:  # report, so the test shows the reason and not a hang
            reply = {"crash": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _dig_many(names: Sequence[str], server: str, port: int, parallel: int) -> dict[str, Any]:
    """Resolve each name with its own `dig` process, as a shell loop (or `xargs -P`) would."""

    def dig(name: str) -> bool:
        argv = ["dig", "+short", "+tries=1", "+time=2", f"@{server}", "-p", str(port)]
        argv += [name, "A", name, "AAAA"]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.returncode == 0 and bool(done.stdout.strip())

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:  # threads only wait on processes
        answered = list(pool.map(dig, names))
    return {"seconds": time.perf_counter() - started, "failed": answered.count(False)}


def main(argv: Sequence[str]) -> int:
    if list(argv) == ["worker"]:
        _worker()
        return 0
    print("usage: python -m lab.dns worker", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
