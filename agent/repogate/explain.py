"""Answer "may this client reach Bitbucket, and why?" from the config and the kernel."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from repogate.addresses import canonical_address, contains
from repogate.config import Config, StaticClients
from repogate.model import DesiredState, KernelTable
from repogate.nft import names


@dataclass(frozen=True)
class Membership:
    group: str
    entry: str  # the normalised element in the set
    set_name: str
    in_kernel: bool | None  # None: the table is not present
    listed_as: tuple[str, ...] = ()  # the config entries that produced it


@dataclass(frozen=True)
class Reach:
    destination: str
    ports: tuple[int, ...]
    allowed_ports: tuple[int, ...]
    via: tuple[Membership, ...]


@dataclass(frozen=True)
class Explanation:
    address: str
    memberships: tuple[Membership, ...]
    reaches: tuple[Reach, ...]
    # Kernel set elements admitting the address that the config no longer wants:
    # what a security team needs to see between an edit and the next sync.
    kernel_only: tuple[tuple[str, str], ...] = ()


def explain(
    config: Config, desired: DesiredState, current: KernelTable | None, address: str
) -> Explanation:
    ip = ipaddress.ip_address(address)  # ValueError for the CLI to report
    family = ip.version
    memberships: list[Membership] = []
    for group_name in desired.groups:
        for kind in names.SET_KINDS:
            set_name = names.client_set(group_name, family, kind)
            spec = desired.sets.get(set_name)
            if spec is None:
                continue
            if kind == "addr":
                found = canonical_address(str(ip))
                matches = [found[1]] if found and found[1] in spec.elements else []
            else:
                matches = [text for text in spec.elements if contains(text, ip)]
            listed = _listed_as(config, group_name, ip)
            for entry in sorted(matches):
                in_kernel = _in_kernel(current, set_name, entry)
                memberships.append(Membership(group_name, entry, set_name, in_kernel, listed))
    reaches = []
    for destination in sorted(config.destinations.values(), key=lambda d: d.name):
        via = []
        allowed: set[int] = set()
        for grant in config.grants():
            if grant.destination != destination.name:
                continue
            for membership in memberships:
                if membership.group == grant.group:
                    via.append(membership)
                    allowed.update(grant.ports)
        reaches.append(
            Reach(destination.name, destination.ports, tuple(sorted(allowed)), tuple(via))
        )
    wanted = {(m.set_name, m.entry) for m in memberships}
    kernel_only = tuple(
        (set_name, entry)
        for set_name, entry in _kernel_matches(current, ip)
        if (set_name, entry) not in wanted
    )
    return Explanation(str(ip), tuple(memberships), tuple(reaches), kernel_only)


def _kernel_matches(
    current: KernelTable | None, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> list[tuple[str, str]]:
    if current is None:
        return []
    found = canonical_address(str(ip))
    text = found[1] if found else str(ip)
    matches = []
    for name, kernel_set in sorted(current.sets.items()):
        if not name.startswith("client_"):
            continue
        if kernel_set.interval:
            hits = [e for e in kernel_set.elements if contains(e, ip)]
        else:
            hits = [text] if text in kernel_set.elements else []
        matches += [(name, hit) for hit in sorted(hits)]
    return matches


def _listed_as(
    config: Config, group_name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> tuple[str, ...]:
    group = config.group(group_name)
    if not isinstance(group, StaticClients):
        return ()
    return tuple(e.text for e in group.entries if e.family == ip.version and contains(e.text, ip))


def _in_kernel(current: KernelTable | None, set_name: str, entry: str) -> bool | None:
    if current is None:
        return None
    kernel_set = current.sets.get(set_name)
    return kernel_set is not None and entry in kernel_set.elements


def format_explanation(
    explanation: Explanation, *, held_sources: list[str] | None = None, daemon: bool = False
) -> list[str]:
    """Lines for people. Advice is what will really help: with a daemon running,
    `repogate sync` goes through it; during a hold only --accept-shrink applies."""
    apply = "the daemon applies it at its next reconcile" if daemon else "run `repogate sync`"
    held = set(held_sources or ())
    lines = []
    if not explanation.memberships:
        lines.append(f"{explanation.address} is in no client group.")
    for m in explanation.memberships:
        enforced = {
            True: "enforced",
            False: f"NOT in the kernel yet ({apply})",
            None: "table not present",
        }[m.in_kernel]
        listed = ", ".join(m.listed_as)
        source = f" (listed as {listed})" if listed and listed != m.entry else ""
        lines.append(
            f"{explanation.address} is in client group {m.group!r} through entry {m.entry}"
            f"{source} in set {m.set_name}: {enforced}"
        )
    for set_name, entry in explanation.kernel_only:
        lines.append(
            f"{explanation.address} is still admitted by the kernel through entry {entry} "
            f"in set {set_name}, which the config no longer wants: {apply}"
        )
    for group in sorted({m.group for m in explanation.memberships} & held):
        lines.append(
            f"  group {group!r} is HELD BACK: its last refresh shrank by more than max_shrink, "
            "so its previous entries (this one among them) stay enforced until a refresh "
            "agrees; to apply the shrunk list now: `repogate sync --accept-shrink`"
        )
    for reach in explanation.reaches:
        ports = ", ".join(map(str, reach.ports))
        refused = [p for p in reach.ports if p not in reach.allowed_ports]
        if reach.allowed_ports:
            groups = ", ".join(sorted({m.group for m in reach.via}))
            allowed = ", ".join(map(str, reach.allowed_ports))
            lines.append(f"  {reach.destination}: allowed on TCP {allowed} via {groups}")
            if refused:
                lines.append(
                    f"  {reach.destination}: refused on TCP {', '.join(map(str, refused))} "
                    "(no rule grants these ports)"
                )
        else:
            lines.append(f"  {reach.destination}: refused on TCP {ports} (TCP reset)")
    return lines
