"""The config's data: frozen dataclasses, checked and built by `repogate.config`.

Durations are seconds (floats); networks are normalised `Entry` values; every
optional key has its default here, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from repogate.addresses import Entry
from repogate.model import Hook


@dataclass(frozen=True)
class AgentConfig:
    table: str = "repogate"
    state_dir: Path = Path("/var/lib/repogate")
    hooks: tuple[Hook, ...] = ("forward",)
    # The broadest client network accepted, so a stray 0.0.0.0/0 never opens the gate.
    min_client_prefix_v4: int = 8
    min_client_prefix_v6: int = 32
    # "keep": rules stay when the daemon stops (fail closed); "remove": delete the table.
    on_stop: Literal["keep", "remove"] = "keep"
    # How often the daemon re-reads the whole table to find and repair drift.
    verify_interval: float = 30.0
    log_format: Literal["text", "json"] = "text"
    # Interfaces whose addresses Bitbucket must allow; empty: those with a default route.
    egress_interfaces: tuple[str, ...] = ()
    # How long a failing source's last known good entries stay enforced.
    max_stale: float = 86400.0
    # A refresh that shrinks a list by more than this fraction is held back.
    max_shrink: float = 0.5

    @property
    def prefix_limits(self) -> dict[int, int]:
        return {4: self.min_client_prefix_v4, 6: self.min_client_prefix_v6}


# Prometheus's default port allocations have filled 9100-9999 (since 2023); this
# port is outside that list.
DEFAULT_METRICS_PORT = 10419
NO_SHRINK_HOLD = 1.0  # a max_shrink no refresh can exceed


@dataclass(frozen=True)
class MetricsConfig:
    host: str | None = "127.0.0.1"  # None: metrics off
    port: int = DEFAULT_METRICS_PORT
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None


@dataclass(frozen=True)
class WhyConfig:
    """The "why" page: answers each device, on the addresses given, with its own verdict."""

    listen: tuple[tuple[str, int], ...] = ()  # (address, port); empty: off


@dataclass(frozen=True)
class EgressConfig:
    """The addresses Bitbucket's IP allowlist holds, and whether repogate pins traffic to them."""

    addresses: tuple[str, ...] = ()  # canonical; at most one per family is translated to
    snat: bool = False  # source NAT admitted flows to protected destinations, in the table

    def address(self, family: int) -> str | None:
        """The address flows of `family` are translated to: the first one declared."""
        return next((a for a in self.addresses if (":" in a) == (family == 6)), None)


ProbeType = Literal["ssh", "git-https"]


@dataclass(frozen=True)
class Probe:
    """A check of the whole path to Bitbucket, from this host, as git would use it."""

    name: str
    type: ProbeType
    target: str = ""  # ssh: host:port
    known_hosts: Path | None = None  # ssh
    url: str = ""  # git-https: the repository's clone URL
    token_file: Path | None = None  # git-https: a repository access token
    ca_file: Path | None = None  # git-https: a private CA (tests, proxies)
    interval: float = 60.0
    timeout: float = 10.0


@dataclass(frozen=True)
class AuditConfig:
    path: Path | None = None  # also append every change as one JSON line here


@dataclass(frozen=True)
class ResolverConfig:
    nameservers: tuple[str, ...] = ()  # empty: the system's /etc/resolv.conf
    port: int = 53
    timeout: float = 2.0


@dataclass(frozen=True)
class HttpOptions:
    """How to fetch a URL: the part HTTP client groups and IP-range feeds share."""

    url: str
    allow_insecure: bool = False  # plain http:// (and https -> http redirects)
    ca_file: Path | None = None  # trust this CA (bundle) instead of the system's
    token_file: Path | None = None  # a bearer token, read at each fetch
    timeout: float = 10.0
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class FeedConfig:
    """A published IP-range feed (Atlassian's JSON), filtered by product and direction."""

    http: HttpOptions
    products: tuple[str, ...]
    directions: tuple[str, ...]
    interval: float = 6 * 3600.0


@dataclass(frozen=True)
class Destination:
    name: str
    entries: tuple[Entry, ...]
    ports: tuple[int, ...]
    hosts: tuple[str, ...] = ()  # resolved (A and AAAA) and unioned with `entries`
    feed: FeedConfig | None = None
    preset: str | None = None
    # An address that left DNS stays allowed this long, for clients with cached answers.
    linger: float = 3600.0
    min_refresh: float = 30.0
    max_refresh: float = 3600.0

    @property
    def dynamic(self) -> bool:
        return bool(self.hosts or self.feed)


@dataclass(frozen=True)
class StaticClients:
    """A client group whose entries are written in the config."""

    name: str
    entries: tuple[Entry, ...]
    # Admitted only for packets arriving on these interfaces (empty: any), so a host
    # elsewhere cannot borrow the group's addresses.
    interfaces: tuple[str, ...] = ()
    type: Literal["static"] = "static"


@dataclass(frozen=True)
class FileClients:
    """A client group read from a local file at every sync (MDM or inventory exports)."""

    name: str
    path: Path
    format: Literal["lines", "json"] = "lines"
    json_path: str | None = None  # dotted key path to the list inside a JSON document
    interval: float = 10.0  # how often the daemon checks the file for changes
    max_stale: float | None = None  # None: agent.max_stale
    max_shrink: float | None = None  # None: agent.max_shrink
    # Admitted only for packets arriving on these interfaces (empty: any), so a host
    # elsewhere cannot borrow the group's addresses.
    interfaces: tuple[str, ...] = ()
    type: Literal["file"] = "file"


@dataclass(frozen=True)
class HttpClients:
    """A client group fetched over HTTPS (an MDM or inventory export)."""

    name: str
    http: HttpOptions
    format: Literal["lines", "json"] = "lines"
    json_path: str | None = None
    interval: float = 300.0
    max_stale: float | None = None
    max_shrink: float | None = None
    # Admitted only for packets arriving on these interfaces (empty: any), so a host
    # elsewhere cannot borrow the group's addresses.
    interfaces: tuple[str, ...] = ()
    type: Literal["http"] = "http"


@dataclass(frozen=True)
class DnsClients:
    """A client group of dynamic-DNS names, each refreshed when its TTL runs out."""

    name: str
    names: tuple[str, ...]
    min_refresh: float = 30.0
    max_refresh: float = 3600.0
    max_addresses: int = 8  # per name: more are rejected (a wildcard or a CDN answer)
    max_stale: float | None = None
    max_shrink: float | None = None
    # Admitted only for packets arriving on these interfaces (empty: any), so a host
    # elsewhere cannot borrow the group's addresses.
    interfaces: tuple[str, ...] = ()
    type: Literal["dns"] = "dns"

    @property
    def interval(self) -> float:
        return self.min_refresh


DeviceMap = Literal["wireguard", "openvpn", "dhcp", "neighbours"]


MdmVendor = Literal["intune", "jamf", "fleet"]
MDM_VENDORS: tuple[MdmVendor, ...] = ("intune", "jamf", "fleet")
# Microsoft Graph's complianceState values (managedDevice, v1.0).
INTUNE_STATES = (
    "unknown",
    "compliant",
    "noncompliant",
    "conflict",
    "error",
    "inGracePeriod",
    "configManager",
)


@dataclass(frozen=True)
class MdmOptions:
    """An MDM read through its API: where, with which credential, what counts as compliant.

    `http.url` is the API's base (Graph for Intune, the server for Jamf Pro and Fleet);
    its ca_file, timeout and max_bytes (per response) apply to every request, the token
    request included. Secrets stay in files, read at each token request.
    """

    vendor: MdmVendor
    http: HttpOptions
    authority: str = "https://login.microsoftonline.com"  # intune
    tenant: str = ""  # intune
    client_id: str = ""  # intune, jamf
    client_secret_file: Path | None = None  # intune, jamf
    compliant_states: tuple[str, ...] = ("compliant",)  # intune
    compliant_group: str = ""  # jamf: membership of this computer group decides
    policies: tuple[int, ...] = ()  # fleet: these must pass; empty: no failing policy
    page_size: int = 100


@dataclass(frozen=True)
class Inventory:
    """Who is compliant: a device list (CSV or JSON) in a file, over HTTPS, or an MDM's API."""

    name: str
    format: Literal["csv", "json"]
    path: Path | None = None  # type "file"
    http: HttpOptions | None = None  # type "http"
    max_age: float | None = None  # a record last seen longer ago no longer counts
    interval: float = 10.0  # how often it is checked (HTTP, MDM: fetched) for changes
    mdm: MdmOptions | None = None  # types "intune", "jamf", "fleet"
    max_stale: float | None = None  # None: the agent's
    enrolments: tuple[Path, ...] = ()  # CSVs joining its devices to VPN identities

    @property
    def type(self) -> Literal["file", "http", "intune", "jamf", "fleet"]:
        if self.mdm is not None:
            return self.mdm.vendor
        return "file" if self.path is not None else "http"


@dataclass(frozen=True)
class DeviceClients:
    """A client group of devices: who the host sees right now (an address map),
    admitted while their inventory record qualifies."""

    name: str
    type: DeviceMap
    inventory: str | None = None  # None: every device the map sees is admitted
    interface: str | None = None  # wireguard: the interface; openvpn: its tun device
    max_handshake_age: float = 180.0  # wireguard: older handshakes are absent
    status_file: Path | None = None  # openvpn
    management: str | None = None  # openvpn: a unix socket path, for instant kills
    leases: Path | None = None  # dhcp
    lease_format: Literal["dnsmasq", "kea"] = "dnsmasq"  # dhcp
    interval: float = 2.0  # how often the map is read
    max_stale: float | None = None
    max_shrink: float | None = None
    interfaces: tuple[str, ...] = ()  # binding; neighbours: the interfaces to watch


ClientGroup = StaticClients | FileClients | HttpClients | DnsClients | DeviceClients


@dataclass(frozen=True)
class Rule:
    clients: tuple[str, ...]
    destinations: tuple[str, ...]
    ports: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Grant:
    """One effective permission: members of `group` may reach `destination` on `ports`."""

    group: str
    destination: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Config:
    agent: AgentConfig
    destinations: Mapping[str, Destination]
    clients: tuple[ClientGroup, ...]
    rules: tuple[Rule, ...] = ()
    path: Path | None = None
    resolver: ResolverConfig = ResolverConfig()
    metrics: MetricsConfig = MetricsConfig()
    audit: AuditConfig = AuditConfig()
    inventories: Mapping[str, Inventory] = field(default_factory=dict)
    why: WhyConfig = WhyConfig()
    egress: EgressConfig = EgressConfig()
    probes: tuple[Probe, ...] = ()

    def max_stale(self, group: ClientGroup) -> float:
        own = getattr(group, "max_stale", None)
        return float(own) if own is not None else self.agent.max_stale

    def max_shrink(self, group: ClientGroup) -> float:
        """A device group's shrink is never held back unless it says so: a device that
        stops qualifying, or leaves, loses access at once (the fail-closed direction),
        and an address it left may already belong to someone else (a VPN pool)."""
        own = getattr(group, "max_shrink", None)
        if own is not None:
            return float(own)
        return NO_SHRINK_HOLD if isinstance(group, DeviceClients) else self.agent.max_shrink

    def group(self, name: str) -> ClientGroup:
        return next(group for group in self.clients if group.name == name)

    def grants(self) -> tuple[Grant, ...]:
        """Rules resolved to (group, destination, ports); without rules, all to all."""
        ports_by_pair: dict[tuple[str, str], set[int]] = {}
        if not self.rules:
            for group in self.clients:
                for destination in self.destinations.values():
                    ports_by_pair[(group.name, destination.name)] = set(destination.ports)
        for rule in self.rules:
            for group_name in rule.clients:
                for destination_name in rule.destinations:
                    offered = set(self.destinations[destination_name].ports)
                    wanted = offered if rule.ports is None else offered & set(rule.ports)
                    if wanted:
                        pair = (group_name, destination_name)
                        ports_by_pair.setdefault(pair, set()).update(wanted)
        return tuple(
            Grant(group, destination, tuple(sorted(ports)))
            for (group, destination), ports in sorted(ports_by_pair.items())
        )
