"""The lab's fixed plan: who lives where, who listens on what, and who should reach what.

Only documentation and test ranges are used (RFC 1918 10/8 for clients, RFC 5737 198.51.100/24
and 203.0.113/24, RFC 3849 2001:db8::/32), and the gateway has no uplink, so nothing the lab
sends can be routed off the host. Keeping the plan as data (rather than inside the code that
builds it) lets the demo, the tests and the config derivation agree on one source of truth.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

GATEWAY = "gw"


@dataclass(frozen=True)
class Link:
    """A point-to-point veth between the gateway and one neighbour namespace.

    The neighbour's addresses live in the link's subnet; the gateway takes `.1` / `::1`.
    """

    role: str
    short: str  # at most 4 characters: interface names are `<tag><g|n><short>` (<= 15)
    v4: tuple[str, ...]
    v6: tuple[str, ...] = ()
    v4_prefix: int = 24
    v6_prefix: int = 64

    @property
    def gw_v4(self) -> str | None:
        """The gateway's address on this link (`.1`), or None for a v6-only link."""
        return _first_host(self.v4[0], self.v4_prefix) if self.v4 else None

    @property
    def gw_v6(self) -> str | None:
        """The gateway's IPv6 address on this link (`::1`), or None for a v4-only link."""
        return _first_host(self.v6[0], self.v6_prefix) if self.v6 else None


@dataclass(frozen=True)
class Client:
    """A client namespace: its primary addresses and whether the lab config approves it."""

    role: str
    v4: str | None
    v6: str | None
    approved: bool

    def addresses(self) -> tuple[str, ...]:
        """Return the client's primary addresses (v4 first)."""
        return tuple(a for a in (self.v4, self.v6) if a is not None)


@dataclass(frozen=True)
class Target:
    """One (address, port) a client may try to reach, with the name it is known by."""

    name: str
    role: str  # the namespace the listener lives in
    address: str
    port: int
    protected: bool  # inside a repogate destination (networks and ports)

    @property
    def version(self) -> int:
        """IP version of the address (4 or 6)."""
        return ipaddress.ip_address(self.address).version

    @property
    def hostport(self) -> str:
        """`addr:port`, with IPv6 addresses in brackets."""
        host = f"[{self.address}]" if self.version == 6 else self.address
        return f"{host}:{self.port}"

    @property
    def label(self) -> str:
        """Human label such as `bitbucket 198.51.100.10:22`."""
        return f"{self.name} {self.hostport}"

    @property
    def banner(self) -> str:
        """The exact line the lab server sends for this target."""
        return f"repogate-lab {self.name} {self.hostport}"


@dataclass(frozen=True)
class Service:
    """A named listener address in a server namespace, on one or more ports."""

    name: str
    role: str
    address: str
    ports: tuple[int, ...]
    protected: bool

    def targets(self) -> list[Target]:
        """Return one Target per port."""
        return [Target(self.name, self.role, self.address, p, self.protected) for p in self.ports]


@dataclass(frozen=True)
class LabSpec:
    """The whole plan; `DEFAULT_SPEC` is the one the demo and the tests use."""

    links: tuple[Link, ...]
    clients: tuple[Client, ...]
    services: tuple[Service, ...]
    # What the lab writes into the repogate config (the fake Bitbucket and the office).
    bitbucket_networks: tuple[str, ...]
    bitbucket_ports: tuple[int, ...]
    office_addresses: tuple[str, ...]
    # Extra vantage points: other addresses in a client namespace, probed with that source.
    extra_sources: tuple[Client, ...] = ()

    def roles(self) -> tuple[str, ...]:
        """Every namespace role, gateway first."""
        return (GATEWAY, *(link.role for link in self.links))

    def link(self, role: str) -> Link:
        """Return the link of a neighbour role."""
        for link in self.links:
            if link.role == role:
                return link
        raise KeyError(f"no link for role {role!r}")

    def client(self, role: str) -> Client:
        """Return a client by role."""
        for client in self.clients:
            if client.role == role:
                return client
        raise KeyError(f"no client {role!r}")

    def vantages(self) -> list[Client]:
        """Every client, each followed by its extra sources: what the demo probes from."""
        ordered: list[Client] = []
        for client in self.clients:
            ordered.append(client)
            ordered += [extra for extra in self.extra_sources if extra.role == client.role]
        return ordered

    def targets(self) -> list[Target]:
        """Every (address, port) some server listens on, in display order."""
        return [t for service in self.services for t in service.targets()]

    def targets_named(self, name: str) -> list[Target]:
        """Every target of one service name (e.g. all `bitbucket` addresses and ports)."""
        found = [t for t in self.targets() if t.name == name]
        if not found:
            raise KeyError(f"no service named {name!r}")
        return found

    def server_roles(self) -> list[str]:
        """The namespaces that run a server, in link order."""
        return [link.role for link in self.links if self.services_in(link.role)]

    def services_in(self, role: str) -> list[Service]:
        """The services one server namespace listens for."""
        return [s for s in self.services if s.role == role]


def reachable_versions(client: Client) -> set[int]:
    """IP versions the client can originate (a v4-only client has no v6 route at all)."""
    return {ipaddress.ip_address(a).version for a in client.addresses()}


def expected_allowed(client: Client, target: Target) -> bool:
    """What the default lab config should do: protected targets only for approved clients."""
    return client.approved or not target.protected


def _first_host(address: str, prefix: int) -> str:
    network = ipaddress.ip_interface(f"{address}/{prefix}").network
    return str(network.network_address + 1)


DEFAULT_SPEC = LabSpec(
    links=(
        Link("alice", "alic", v4=("10.20.0.10",), v6=("2001:db8:20::10",)),
        # 10.30.0.8 sits next to bob but is not approved: it proves that a single approved
        # address is not widened to its subnet.
        Link("bob", "bob", v4=("10.30.0.7", "10.30.0.8")),
        Link("mallory", "mall", v4=("10.66.0.66",), v6=("2001:db8:66::66",)),
        Link("bitbucket", "bitb", v4=("198.51.100.10", "198.51.100.20"), v6=("2001:db8:bb::10",)),
        Link("other", "othr", v4=("203.0.113.10",), v6=("2001:db8:ff::10",)),
    ),
    clients=(
        Client("alice", "10.20.0.10", "2001:db8:20::10", approved=True),
        Client("bob", "10.30.0.7", None, approved=True),
        Client("mallory", "10.66.0.66", "2001:db8:66::66", approved=False),
    ),
    services=(
        Service("bitbucket", "bitbucket", "198.51.100.10", (22, 443), protected=True),
        Service("bitbucket", "bitbucket", "2001:db8:bb::10", (22, 443), protected=True),
        Service("altssh", "bitbucket", "198.51.100.20", (443,), protected=True),
        Service("other", "other", "203.0.113.10", (22, 443, 80), protected=False),
        Service("other", "other", "2001:db8:ff::10", (22, 443, 80), protected=False),
    ),
    bitbucket_networks=("198.51.100.0/24", "2001:db8:bb::/48"),
    bitbucket_ports=(22, 443),
    office_addresses=("10.20.0.0/16", "2001:db8:20::/48", "10.30.0.7"),
    extra_sources=(Client("bob", "10.30.0.8", None, approved=False),),
)
