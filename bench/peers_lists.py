"""The list peers of bench/peers.py: CrowdSec's firewall bouncer, repogate's http group,
and raw `nft -f` (the floor), each in its own namespace under its own `nft monitor`.

A change is timed from the moment the data left the publisher (the stand-in's `served`
time for the two daemons; just before `nft -f` starts for the floor) to the committed
transaction after which the set held exactly the new content, so neither daemon's poll
interval counts. Both daemons poll every second; everything else is as shipped, except
what keeps them in their namespace and off the host's tables: their own config files,
their own table and set names, logs on stdout, state under the benchmark's temp dir.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers_lab import DEBIAN_PYTHON, REPO, Child, Monitor, Outcome, StandIn, in_ns

BOUNCER = "/usr/bin/crowdsec-firewall-bouncer"
PORT = 18080
WAIT = 600.0  # seconds any one change may take before the run gives up

BOUNCER_CONFIG = """\
mode: nftables
pid_dir: {work}/
update_frequency: 1s
daemonize: true
log_mode: stdout
log_level: info
api_url: http://127.0.0.1:{port}/
api_key: {key}
insecure_skip_verify: false
disable_ipv6: false
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: peers-blacklist
blacklists_ipv6: peers6-blacklist
nftables:
  ipv4:
    enabled: true
    set-only: false
    table: peers_crowdsec
    chain: peers-chain
  ipv6:
    enabled: true
    set-only: false
    table: peers_crowdsec6
    chain: peers6-chain
prometheus:
  enabled: true
  listen_addr: 127.0.0.1
  listen_port: 60601
"""

REPOGATE_CONFIG = """
[agent]
table = "repogate"
state_dir = "{work}/state"

[destinations.bitbucket]
networks = ["198.51.100.0/24", "2001:db8:bb::/48"]
ports = [22, 443]

[[clients]]
name = "fleet"
type = "http"
url = "http://127.0.0.1:{port}/list.txt"
allow_insecure = true
interval = "1s"
max_shrink = 1.0
"""


@dataclass(frozen=True)
class Sample:
    seconds: float  # published until the kernel held the new content
    transactions: int
    mixed: int


@dataclass
class ListPeer:
    """One peer: how to make it take a new list, and the monitor that judges it."""

    name: str
    monitor: Monitor
    publish: Callable[[frozenset[str], frozenset[str]], float]  # (old, new) -> published at
    closers: list[Callable[[], None]] = field(default_factory=list)
    alive: Callable[[], None] = lambda: None

    def change(self, new: frozenset[str]) -> Sample:
        self.alive()
        mark = self.monitor.expect(new)
        published = self.publish(mark[1], new)
        outcome: Outcome = self.monitor.wait(mark, WAIT)
        self.alive()
        return Sample(outcome.done_at - published, outcome.transactions, outcome.mixed)

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer()


def floor(ns: str, work: Path, start: frozenset[str]) -> ListPeer:
    """Raw `nft -f`: one file, one transaction, the least any agent can do."""
    table = "ip peers_floor"
    subprocess.run(in_ns(ns, "nft", "add", "table", *table.split()), check=True)
    monitor = Monitor(ns, "ip", "peers_floor", "s")
    script = work / "floor.nft"

    def publish(old: frozenset[str], new: frozenset[str]) -> float:
        lines = []
        if old - new:
            lines.append(f"delete element {table} s {{ {', '.join(sorted(old - new))} }}")
        if new - old:
            lines.append(f"add element {table} s {{ {', '.join(sorted(new - old))} }}")
        script.write_text("\n".join(lines) + "\n")
        started = time.time()
        subprocess.run(in_ns(ns, "nft", "-f", str(script)), check=True)
        return started

    subprocess.run(
        in_ns(ns, "nft", "add", "set", *table.split(), "s", "{ type ipv4_addr; }"), check=True
    )
    peer = ListPeer("nft -f (floor)", monitor, publish, [monitor.close])
    peer.change(start)
    return peer


def _standin_peer(
    name: str, ns: str, *, path: str, start: frozenset[str], monitor: Monitor, key: str
) -> tuple[ListPeer, StandIn]:
    standin = StandIn(ns, PORT, key)
    standin.publish(sorted(start))

    def publish(old: frozenset[str], new: frozenset[str]) -> float:
        return standin.served_at(path, standin.publish(sorted(new)), WAIT)

    return ListPeer(name, monitor, publish, [monitor.close, standin.close]), standin


def bouncer_version() -> str | None:
    """The installed package's version (Debian's build leaves `-V` saying `version: -`)."""
    if shutil.which(BOUNCER) is None:
        return None
    package = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "crowdsec-firewall-bouncer"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"Debian package {package or '(not from a package)'}, nftables mode"


def crowdsec(ns: str, work: Path, start: frozenset[str]) -> ListPeer:
    """Debian's crowdsec-firewall-bouncer (nftables mode) polling the stand-in's LAPI."""
    key = secrets.token_hex(16)
    config = work / "crowdsec-firewall-bouncer.yaml"
    config.write_text(BOUNCER_CONFIG.format(work=work, port=PORT, key=key))
    monitor = Monitor(ns, "ip", "peers_crowdsec", "peers-blacklist")
    mark = monitor.expect(start)
    peer, _standin = _standin_peer(
        "crowdsec-firewall-bouncer", ns, path="lapi", start=start, monitor=monitor, key=key
    )
    argv = in_ns(ns, BOUNCER, "-c", str(config), "-t")
    check = subprocess.run(argv, capture_output=True, check=False)
    if check.returncode != 0:
        peer.close()
        raise RuntimeError(f"bouncer refused its config: {check.stderr.decode()[-500:]}")
    child = Child(in_ns(ns, BOUNCER, "-c", str(config)))
    peer.closers.append(child.close)  # SIGTERM: it deletes its tables, as shipped
    peer.alive = child.check_alive
    try:
        monitor.wait(mark, 60)  # the startup pull applied
    except RuntimeError as exc:
        peer.close()
        raise RuntimeError(child.failure(str(exc))) from exc
    return peer


def repogate(ns: str, work: Path, start: frozenset[str]) -> ListPeer:
    """`repogate run` with one http client group polling the stand-in's list every second."""
    config = work / "repogate.toml"
    config.write_text(REPOGATE_CONFIG.format(work=work, port=PORT))
    monitor = Monitor(ns, "inet", "repogate", "client_fleet_v4_addr")
    mark = monitor.expect(start)
    peer, _standin = _standin_peer(
        "repogate run (http group)", ns, path="list", start=start, monitor=monitor, key="-"
    )
    argv = ["env", f"PYTHONPATH={REPO / 'agent'}", DEBIAN_PYTHON, "-m", "repogate"]
    child = Child(in_ns(ns, *argv, "run", "--config", str(config)))
    peer.closers.append(child.close)
    peer.alive = child.check_alive
    try:
        child.wait_line(lambda line: " ready: " in line, 120)
        monitor.wait(mark, 60)
    except RuntimeError as exc:
        peer.close()
        raise RuntimeError(child.failure(str(exc))) from exc
    return peer
