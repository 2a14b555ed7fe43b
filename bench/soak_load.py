"""The soak's load: what the daemon is fed, how it churns, and what the kernel must hold.

One `file` client group (`fleet`) lists 100,000 single addresses and 1,000 /24
networks (bench/run.py's cold-load shape: the networks land in the interval set),
and one `dns` group (`ddns`) names 10,000 hosts served by dnsmasq from a hosts
file. Each churn replaces 1 % of the file's addresses and of its networks with
new ones (the file renamed into place, as an inventory job would), or moves 1 %
of the names to new addresses (the hosts file rewritten, dnsmasq sent SIGHUP).
The expected content of every client set is known exactly at any time, so the
final `nft -j` listing can be compared element by element. A seeded generator
makes two runs feed the same churn.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLEET, DDNS = "fleet", "ddns"
DOMAIN = "lab.test"
TABLE = "repogate"


def client_address(i: int) -> str:
    """The i-th client address in 10.0.0.0/8 (bench/run.py's `addresses`)."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def network(i: int) -> str:
    """The i-th /24 from 100.0.0.0 up, never adjacent to another (bench/run.py's `networks`)."""
    return f"{100 + (i >> 15)}.{(i >> 7) & 255}.{(i * 2) & 255}.0/24"


def ddns_address(i: int) -> str:
    """The i-th address handed to a DDNS name, in 172.16.0.0/12 (apart from the fleet's)."""
    return f"172.{16 + ((i >> 16) & 15)}.{(i >> 8) & 255}.{i & 255}"


def ddns_name(i: int) -> str:
    return f"h{i}.{DOMAIN}"


@dataclass
class Load:
    """The soak's inputs; `churn_*` change 1 % (`share`) and return how many moved."""

    work: Path
    clients: int = 100_000
    networks: int = 1_000
    names: int = 10_000
    share: float = 0.01
    seed: int = 13
    fleet: list[int] = field(default_factory=list)  # indices into client_address
    sites: list[int] = field(default_factory=list)  # indices into network
    ddns: list[int] = field(default_factory=list)  # name i -> index into ddns_address
    _rng: random.Random = field(init=False)
    _next: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.fleet = list(range(self.clients))
        self.sites = list(range(self.networks))
        self.ddns = list(range(self.names))
        self._next = {"fleet": self.clients, "sites": self.networks, "ddns": self.names}

    @property
    def listing(self) -> Path:
        return self.work / "fleet.txt"

    def name_list(self) -> list[str]:
        return [ddns_name(i) for i in range(self.names)]

    def hosts(self) -> dict[str, tuple[str, ...]]:
        """name -> addresses, as lab.dns.DnsServer serves them."""
        return {ddns_name(i): (ddns_address(a),) for i, a in enumerate(self.ddns)}

    def write_listing(self) -> None:
        """The fleet file, written aside and renamed into place (never read half-written)."""
        lines = [client_address(i) for i in self.fleet] + [network(i) for i in self.sites]
        scratch = self.listing.with_suffix(".new")
        scratch.write_text("\n".join(lines) + "\n")
        os.replace(scratch, self.listing)

    def _replace(self, values: list[int], counter: str) -> list[int]:
        """Give `share` of the positions in `values` fresh indices; return the positions."""
        count = max(1, round(len(values) * self.share))
        positions = self._rng.sample(range(len(values)), count)
        for position in positions:
            values[position] = self._next[counter]
            self._next[counter] += 1
        return positions

    def churn_listing(self) -> int:
        """1 % of the addresses and 1 % of the networks replaced; the file rewritten."""
        moved = len(self._replace(self.fleet, "fleet")) + len(self._replace(self.sites, "sites"))
        self.write_listing()
        return moved

    def churn_ddns(self) -> dict[str, tuple[str, ...]]:
        """1 % of the names moved to new addresses: the changes for DnsServer.set_hosts."""
        positions = self._replace(self.ddns, "ddns")
        return {ddns_name(i): (ddns_address(self.ddns[i]),) for i in positions}

    def expected(self) -> dict[str, set[str]]:
        """Every client set's content as nft lists it (sets not named here must be empty)."""
        return {
            f"client_{FLEET}_v4_addr": {client_address(i) for i in self.fleet},
            f"client_{FLEET}_v4_net": {network(i) for i in self.sites},
            f"client_{DDNS}_v4_addr": {ddns_address(a) for a in self.ddns},
        }


def config_text(load: Load, state: Path, port: int, nameserver: str) -> str:
    names = ",\n  ".join(json.dumps(name) for name in load.name_list())
    return f"""
[agent]
table = "{TABLE}"
state_dir = "{state}"

[metrics]
listen = "127.0.0.1:{port}"

[resolver]
nameservers = ["{nameserver}"]
timeout = "2s"

[destinations.bitbucket]
networks = ["198.51.100.0/24", "2001:db8:bb::/48"]
ports = [22, 443]

[[clients]]
name = "{FLEET}"
type = "file"
path = "{load.listing}"

[[clients]]
name = "{DDNS}"
type = "dns"
names = [
  {names}
]
"""


def element_text(element: Any) -> str:
    """One element of `nft -j` output in the text form `expected` uses."""
    if isinstance(element, str):
        return element
    if isinstance(element, dict):
        if "elem" in element:  # an element with options (timeout, counter, comment)
            return element_text(element["elem"]["val"])
        if "prefix" in element:
            return f"{element['prefix']['addr']}/{element['prefix']['len']}"
        if "range" in element:
            low, high = element["range"]
            return f"{low}-{high}"
    return json.dumps(element)  # unknown shape: kept visible, never equal to an expected one


def kernel_sets(ns: str) -> dict[str, set[str]]:
    """Every set of the owned table with its elements: one `nft -j list table`."""
    argv = ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", TABLE]
    listing = subprocess.run(argv, capture_output=True, text=True, check=True)
    sets: dict[str, set[str]] = {}
    for item in json.loads(listing.stdout)["nftables"]:
        if "set" in item:
            found = item["set"]
            sets[found["name"]] = {element_text(e) for e in found.get("elem", [])}
    return sets


@dataclass(frozen=True)
class SetCheck:
    """One client set against its expected content."""

    name: str
    expected: int
    found: int
    missing: list[str]  # a sample
    extra: list[str]  # a sample
    missing_count: int
    extra_count: int

    @property
    def ok(self) -> bool:
        return not self.missing_count and not self.extra_count


def compare(expected: dict[str, set[str]], found: dict[str, set[str]]) -> list[SetCheck]:
    """Every set named in `expected`, and every other client set (which must be empty)."""
    names = sorted(set(expected) | {n for n in found if n.startswith("client_")})
    checks = []
    for name in names:
        want, have = expected.get(name, set()), found.get(name, set())
        missing, extra = sorted(want - have), sorted(have - want)
        checks.append(
            SetCheck(name, len(want), len(have), missing[:5], extra[:5], len(missing), len(extra))
        )
    return checks
