"""The DNS peers of bench/peers.py: repogate's `type = "dns"` group against azlux/nft-dns.

Each runs in its own namespace beside its own dnsmasq (lab.dns.DnsServer) serving N names,
one A record each, all with the same TTL. Timed by the same `nft monitor` judge as the list
peers: from the process start until the set held every name's address, then, once it has
settled, from dnsmasq having re-read a hosts file in which 1 % of the names (every 100th)
moved to new addresses until the set held exactly the new addresses.

nft-dns is never part of this repository: bench/peers.py runs it from a path given to it
(a checkout, or a bare git directory such as the search tool's mirror, whose HEAD is
unpacked into the temp dir), with its dependencies in a throwaway venv made for the run.
Its requirements.txt pins dnspython 2.0.0, which lacks `dns.resolver.make_resolver_at`,
the call nft-dns makes when `custom_resolver` is set (the only way to point it at our
dnsmasq without editing the namespace's /etc/resolv.conf); 2.4.0 added it, so the venv
gets dnspython 2.4.2 and the pinned pydantic 1.10.4 (what Debian 12, its stated target,
ships).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.peers_lab import (
    DEBIAN_PYTHON,
    REPO,
    Child,
    Monitor,
    Outcome,
    in_ns,
    spread_addresses,
)
from lab.dns import DEFAULT_DOMAIN, DnsServer

TTL = 60  # seconds, every answer: both peers re-ask when it runs out
NFT_DNS_PINS = ("dnspython==2.4.2", "pydantic==1.10.4")
WAIT = 1800.0
_SLEEPING = re.compile(r"Sleeping for (\d+)s")

REPOGATE_CONFIG = """
[agent]
table = "repogate"
state_dir = "{work}/state"

[resolver]
nameservers = ["127.0.0.1"]
timeout = "2s"

[destinations.bitbucket]
networks = ["198.51.100.0/24", "2001:db8:bb::/48"]
ports = [22, 443]

[[clients]]
name = "devices"
type = "dns"
min_refresh = "1s"
max_shrink = 1.0
names = [{names}]
"""

NFT_DNS_CONFIG = """[GLOBAL]
min_ttl = 1
max_ttl = 86400
custom_resolver = 127.0.0.1

[bench]
set_name = allow
enable = true
family = ip
table = nftdns
domains = {names}
"""


@dataclass(frozen=True)
class DnsResult:
    start_s: float  # process start until every name's address was in the set
    start_transactions: int
    changed: int  # names that moved
    follow_s: float | None  # dnsmasq re-read until the set held the new addresses
    follow_transactions: int = 0
    follow_mixed: int = 0
    note: str = ""  # why it did not follow, in the peer's own words


@dataclass(frozen=True)
class NftDns:
    """A runnable nft-dns: the interpreter of its venv, its script, and where it came from."""

    python: Path
    script: Path
    origin: str


def prepare_nft_dns(source: Path, work: Path) -> NftDns:
    """Unpack (if a git dir) and give nft-dns a venv with its dependencies from PyPI."""
    origin = str(source)
    if (source / "nft-dns.py").exists():
        code = source
        if (source / ".git").exists():
            origin += f" at {_git(['-C', str(source), 'rev-parse', '--short', 'HEAD'])}"
    elif (source / "HEAD").exists() and (source / "objects").exists():
        code = work / "nft-dns"
        code.mkdir()
        archive = subprocess.run(
            ["git", "--git-dir", str(source), "archive", "HEAD"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
        origin += f" at {_git(['--git-dir', str(source), 'rev-parse', '--short', 'HEAD'])}"
    else:
        raise FileNotFoundError(f"{source}: neither a checkout with nft-dns.py nor a git dir")
    venv = work / "nft-dns-venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *NFT_DNS_PINS], check=True, capture_output=True)
    return NftDns(venv / "bin" / "python", code / "nft-dns.py", origin)


def _git(args: list[str]) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def hosts_for(count: int) -> dict[str, tuple[str, ...]]:
    names = [f"h{i}.{DEFAULT_DOMAIN}" for i in range(count)]
    return {name: (address,) for name, address in zip(names, spread_addresses(count), strict=True)}


def moved(hosts: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Every 100th name gets a new address, outside all the old ones."""
    names = list(hosts)[::100]
    fresh = spread_addresses(len(names), offset=len(hosts))
    return {name: (address,) for name, address in zip(names, fresh, strict=True)}


def content(hosts: dict[str, tuple[str, ...]]) -> frozenset[str]:
    return frozenset(a for addresses in hosts.values() for a in addresses)


def measure(
    ns: str, work: Path, count: int, monitor: Monitor, *, argv: list[str], kill: int, ttl: int
) -> DnsResult:
    """Start `argv` beside dnsmasq; time the first load, then the move of 1 % of names."""
    hosts = hosts_for(count)
    with DnsServer(work / "dns", netns=ns, address="127.0.0.1", ttl=ttl, hosts=dict(hosts)) as dns:
        mark = monitor.expect(content(hosts))
        started = time.time()
        child = Child(in_ns(ns, *argv))
        try:
            first = monitor.wait(mark, WAIT)
            child.check_alive()
            monitor.settled(quiet=2)
            change = moved(hosts)
            new = content({**hosts, **change})
            mark = monitor.expect(new)
            dns.set_hosts(change)  # returns once dnsmasq has re-read the file
            reread = time.time()
            start_s = first.done_at - started
            follow, note = _follow(monitor, child, mark, 2 * ttl + 1.5 * start_s + 30)
        except RuntimeError as exc:
            raise RuntimeError(child.failure(str(exc))) from exc
        finally:
            child.close(kill)
    if follow is None:
        return DnsResult(start_s, first.transactions, len(change), None, note=note)
    return DnsResult(
        start_s,
        first.transactions,
        len(change),
        follow.done_at - reread,
        follow.transactions,
        follow.mixed,
    )


def _follow(
    monitor: Monitor,
    child: Child,
    mark: tuple[int, frozenset[str]],
    limit: float,
) -> tuple[Outcome | None, str]:
    """Wait for the new content; give up at `limit`, or once the peer says it will sleep
    past it (nft-dns logs `Sleeping for Ns` before each sleep)."""
    deadline = time.monotonic() + limit
    while True:
        child.check_alive()
        try:
            return monitor.wait(mark, min(5.0, max(0.1, deadline - time.monotonic()))), ""
        except RuntimeError as exc:
            missed = str(exc)
        sleeps = [m for line in child.drain() if (m := _SLEEPING.search(line))]
        if sleeps and int(sleeps[-1].group(1)) > limit:
            said = sleeps[-1].string.strip()
            return None, f"never: it went to sleep ({said!r}) before the change"
        if time.monotonic() >= deadline:
            return None, f"not in {limit:.0f} s: {missed}"


def repogate_dns(ns: str, work: Path, count: int, ttl: int = TTL) -> DnsResult:
    names = ", ".join(f'"{name}"' for name in hosts_for(count))
    config = work / "repogate-dns.toml"
    config.write_text(REPOGATE_CONFIG.format(work=work, names=names))
    monitor = Monitor(ns, "inet", "repogate", "client_devices_v4_addr")
    argv = ["env", f"PYTHONPATH={REPO / 'agent'}", DEBIAN_PYTHON, "-m", "repogate", "run"]
    try:
        argv += ["--config", str(config)]
        return measure(ns, work, count, monitor, argv=argv, kill=signal.SIGTERM, ttl=ttl)
    finally:
        monitor.close()


def nft_dns(ns: str, work: Path, count: int, peer: NftDns, ttl: int = TTL) -> DnsResult:
    """nft-dns wants its set made beforehand (it stops if the set is missing)."""
    subprocess.run(in_ns(ns, "nft", "add", "table", "ip", "nftdns"), check=True)
    monitor = Monitor(ns, "ip", "nftdns", "allow")
    subprocess.run(
        in_ns(ns, "nft", "add", "set", "ip", "nftdns", "allow", "{ type ipv4_addr; }"), check=True
    )
    config = work / "nft-dns.conf"
    config.write_text(NFT_DNS_CONFIG.format(names=", ".join(hosts_for(count))))
    argv = [str(peer.python), str(peer.script), "-c", str(config)]
    try:
        # SIGKILL: on SIGTERM it deletes every element one `nft` process at a time, which
        # at 10,000 names takes minutes and measures nothing; the namespace goes anyway.
        return measure(ns, work, count, monitor, argv=argv, kill=signal.SIGKILL, ttl=ttl)
    finally:
        monitor.close()
