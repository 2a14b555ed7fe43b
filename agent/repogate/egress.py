"""What Bitbucket sees of this host: the source address its traffic leaves from, and why.

Bitbucket's IP allowlist decides on the address a connection arrives from, which
is the egress host's own address only when nothing translates it. The report
follows the path a packet to a protected destination takes: repogate's own SNAT
(`[egress] snat`), else another table's SNAT or masquerade on the way out, else
the source address the route picks. It compares that with `[egress] addresses`
(what the allowlist holds) and says what is wrong: a declared address no longer
on any interface, or traffic leaving from an address the allowlist does not hold.
Pure: the kernel's routes, addresses and NAT rules are read by the caller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from repogate.config import Config
from repogate.model import DesiredState, NatRule
from repogate.nft import names

Route = Callable[[str], tuple[str, str] | None]  # destination -> (interface, source)


@dataclass(frozen=True)
class EgressPath:
    family: int
    destination: str  # the protected address the route was asked for
    interface: str
    source: str  # what Bitbucket sees
    how: str  # why that address, in an admin's words
    declared: bool | None  # None: no egress.addresses to check against


@dataclass(frozen=True)
class EgressReport:
    declared: Mapping[str, str]  # declared address -> the interface holding it ("" : none)
    paths: tuple[EgressPath, ...]
    problems: tuple[str, ...]
    snat: bool = False
    unrouted: tuple[int, ...] = ()  # families with no route to Bitbucket (often IPv6)

    def to_json(self) -> dict[str, Any]:
        return {
            "declared": dict(self.declared),
            "paths": [asdict(path) for path in self.paths],
            "problems": list(self.problems),
            "snat": self.snat,
            "unrouted": list(self.unrouted),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EgressReport:
        return cls(
            declared=dict(data.get("declared", {})),
            paths=tuple(EgressPath(**path) for path in data.get("paths", ())),
            problems=tuple(data.get("problems", ())),
            snat=bool(data.get("snat")),
            unrouted=tuple(data.get("unrouted", ())),
        )


def sample_destinations(desired: DesiredState | None, config: Config) -> dict[int, str]:
    """One protected address per family to ask the routing table about: a resolved
    single address when there is one (what git connects to), else the middle of the
    first network (its first host is often a router's own address)."""
    found: dict[int, str] = {}
    for destination in sorted(config.destinations.values(), key=lambda d: d.name):
        for family in (4, 6):
            name = names.destination_set(destination.name, family)
            spec = desired.sets.get(name) if desired is not None else None
            elements = sorted(spec.elements) if spec is not None else []
            elements += [str(e) for e in destination.entries if (":" in str(e)) == (family == 6)]
            if family not in found and elements:
                single = [e for e in elements if "/" not in e and "-" not in e]
                found[family] = single[0] if single else _middle(elements[0])
    return found


def _middle(element: str) -> str:
    network = ipaddress.ip_network(element.split("-", maxsplit=1)[0], strict=False)
    return str(network.network_address + network.num_addresses // 2)


def egress_report(
    config: Config,
    destinations: Mapping[int, str],
    route: Route,
    interface_addresses: Iterable[tuple[str, str]],
    nat_rules: Iterable[NatRule],
) -> EgressReport:
    egress = config.egress
    held = {address: interface for interface, address in interface_addresses}
    declared = {address: held.get(address, "") for address in egress.addresses}
    problems = [
        f"egress address {address} is on no interface of this host"
        + (
            ": repogate translates Bitbucket traffic to it, so replies go nowhere"
            if egress.snat
            else ""
        )
        for address, interface in declared.items()
        if not interface
    ]
    rules = list(nat_rules)
    paths: list[EgressPath] = []
    unrouted: list[int] = []
    for family, destination in sorted(destinations.items()):
        found = route(destination)
        if found is None:
            unrouted.append(family)
            continue
        interface, route_source = found
        source, how = _translated(config, family, interface, route_source, rules)
        ok = source in declared if declared else None
        paths.append(EgressPath(family, destination, interface, source, how, ok))
        if ok is False:
            problems.append(
                f"IPv{family} traffic to Bitbucket leaves from {source} ({how}), which is not "
                "in egress.addresses: Bitbucket's IP allowlist refuses it"
            )
    if not paths and unrouted:
        problems.append("no route to Bitbucket at all from this host")
    return EgressReport(declared, tuple(paths), tuple(problems), egress.snat, tuple(unrouted))


def _translated(
    config: Config, family: int, interface: str, route_source: str, rules: list[NatRule]
) -> tuple[str, str]:
    own = config.egress.address(family) if config.egress.snat else None
    if own is not None:
        return own, f"SNAT by repogate (egress.snat), out of {interface}"
    for rule in rules:
        if rule.family not in (None, family) or rule.oifname not in (None, interface):
            continue
        where = f"table {rule.table} chain {rule.chain}"
        if rule.kind == "masquerade":
            return route_source, f"masquerade in {where}, out of {interface}"
        if rule.address is not None and (":" in rule.address) == (family == 6):
            return rule.address, f"SNAT in {where}, out of {interface}"
    return route_source, f"the address of {interface} (no NAT on the way out)"


def describe(report: EgressReport) -> list[str]:
    """The status lines: what Bitbucket sees, then what is wrong."""
    lines = []
    for path in report.paths:
        verdict = ""
        if path.declared is None:
            verdict = ": Bitbucket's IP allowlist must contain it"
        elif not path.declared:
            verdict = ": NOT in egress.addresses"
        lines.append(f"IPv{path.family}: {path.source}, {path.how}{verdict}")
    lines += [
        f"IPv{family}: no route to Bitbucket (git uses the other family)"
        for family in report.unrouted
    ]
    if report.declared:
        shown = ", ".join(
            f"{address} ({'on ' + interface if interface else 'on NO interface'})"
            for address, interface in report.declared.items()
        )
        lines.append(f"declared (egress.addresses): {shown}")
    lines += [f"PROBLEM: {problem}" for problem in report.problems]
    return lines or ["no protected destination has an address yet"]
