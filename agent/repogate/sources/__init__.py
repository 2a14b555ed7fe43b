"""Sources: where the entries of client groups and dynamic destinations come from.

Every source type sits behind the same small Protocol, so the planner never
knows where entries came from. `specs(config)` lists every source a config
needs, with what to do when it fails: a client group's last known good expires
after `max_stale` (its clients are then refused), a destination's never does
(dropping a destination address would stop gating traffic to it).
A preset's feed carries a fallback, the packaged snapshot of its ranges, served
until the feed first answers, so a first start without network still gates.
A source that fails raises SourceError.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from repogate.addresses import NormalisedEntries, Rejected
from repogate.config import (
    ClientGroup,
    Config,
    Destination,
    DeviceClients,
    DnsClients,
    FileClients,
    HttpClients,
    Inventory,
    StaticClients,
)
from repogate.config.presets import PRESETS, Snapshot
from repogate.errors import SourceError

if TYPE_CHECKING:  # these import this module; only their types are needed here
    from repogate.sources.devices.reader import InventoryReader
    from repogate.sources.dns import Resolves


@dataclass(frozen=True)
class SourceResult:
    entries: NormalisedEntries
    accepted: int
    rejected_count: int = 0
    rejected_sample: tuple[Rejected, ...] = ()
    origin: str = ""
    # Seconds until the source wants asking again (a DNS TTL); None: its fixed interval.
    refresh_in: float | None = None
    # When it was read (set by whoever fetched): a shrink hold is released only by a
    # later fetch that agrees, never by a reconcile that reuses this result.
    fetched_at: float = 0.0
    # Device groups: the device (and owner) behind each address, for the audit trail.
    devices: Mapping[str, str] = field(default_factory=dict)
    # What the admin should know although the entries did not change (an inventory
    # failing behind a device group): a change here is published like one in entries.
    notes: tuple[str, ...] = ()


class Source(Protocol):
    def fetch(self) -> SourceResult:
        """Read the source now; raise SourceError if it cannot be used at all."""
        ...

    def signature(self) -> object | None:
        """A cheap token that changes when the source may have changed; None: always fetch."""
        ...


@dataclass(frozen=True)
class SourceSpec:
    """One source a config needs: its key, what it feeds, and how it may fail."""

    key: str  # a group's name, or "destination:<name>:hosts" / "destination:<name>:feed"
    kind: str  # static, file, http, dns, hosts, feed
    group: str | None  # the client group it feeds, or None
    destination: str | None  # the destination it feeds, or None
    fingerprint: str  # what makes a stored record still apply to this config
    interval: float | None  # None: changes only with the config
    max_stale: float | None  # None: last known good never expires
    max_shrink: float | None  # None: no shrink guard
    make: Callable[[], Source] = field(compare=False, repr=False)
    # The config it was made from: a spec equal to the running one keeps its source
    # (and a DNS source its cache) across a reload.
    settings: object = field(default=None, repr=False)
    # Served while the source has never answered (no record in state_dir); None: nothing.
    fallback: Snapshot | None = field(default=None, repr=False)

    @property
    def dynamic(self) -> bool:
        return self.kind != "static"

    @property
    def label(self) -> str:
        if self.group is not None:
            return f"group {self.group}"
        return f"destination {self.destination} ({self.kind})"


def specs(config: Config, resolver: Resolves | None = None) -> list[SourceSpec]:
    """Every source of a config, clients first. `resolver` is shared by DNS sources,
    an inventory's reader by the device groups that name it."""
    readers: dict[str, InventoryReader] = {}
    found = [_group_spec(group, config, resolver, readers) for group in config.clients]
    for destination in config.destinations.values():
        found += _destination_specs(destination, config, resolver)
    return found


def _group_spec(
    group: ClientGroup,
    config: Config,
    resolver: Resolves | None,
    readers: dict[str, InventoryReader],
) -> SourceSpec:
    limits = config.agent.prefix_limits
    if isinstance(group, DeviceClients):
        return _device_spec(group, config, readers)

    def make() -> Source:
        # Imported here: each source type pulls in its own library only when used.
        if isinstance(group, StaticClients):
            from repogate.sources.static import StaticSource  # noqa: PLC0415

            return StaticSource(group)
        if isinstance(group, FileClients):
            from repogate.sources.file import FileSource  # noqa: PLC0415

            return FileSource(group, limits)
        if isinstance(group, HttpClients):
            from repogate.sources.http import HttpSource  # noqa: PLC0415

            return HttpSource(group, limits)
        from repogate.sources.dns import DnsSource  # noqa: PLC0415

        assert isinstance(group, DnsClients)
        return DnsSource(group, _resolver(config, resolver), max_stale=config.max_stale(group))

    if isinstance(group, FileClients):
        fingerprint = f"file:{group.path}:{group.format}:{group.json_path or ''}"
    elif isinstance(group, HttpClients):
        fingerprint = f"http:{group.http.url}:{group.format}:{group.json_path or ''}"
    elif isinstance(group, DnsClients):
        fingerprint = "dns:" + ",".join(sorted(group.names))
    else:
        fingerprint = f"static:{group.name}"
    static = isinstance(group, StaticClients)
    return SourceSpec(
        key=group.name,
        kind=group.type,
        group=group.name,
        destination=None,
        fingerprint=fingerprint,
        interval=None if static else float(getattr(group, "interval", 60.0)),
        max_stale=None if static else config.max_stale(group),
        max_shrink=None if static else config.max_shrink(group),
        make=make,
        settings=(group, config.agent.prefix_limits, config.resolver),
    )


def _device_spec(
    group: DeviceClients, config: Config, readers: dict[str, InventoryReader]
) -> SourceSpec:
    inventory = config.inventories.get(group.inventory) if group.inventory else None

    def make() -> Source:
        from repogate.sources.devices.reader import InventoryReader  # noqa: PLC0415
        from repogate.sources.devices.source import DeviceSource  # noqa: PLC0415

        reader = None
        if inventory is not None:
            if inventory.name not in readers:
                readers[inventory.name] = InventoryReader(
                    inventory, config.agent.max_stale, needs_macs=_needs_macs(config, inventory)
                )
            reader = readers[inventory.name]
        return DeviceSource(group, reader)

    where = group.interface or group.status_file or group.leases or ",".join(group.interfaces)
    return SourceSpec(
        key=group.name,
        kind=group.type,
        group=group.name,
        destination=None,
        fingerprint=f"{group.type}:{where}:{group.inventory or ''}",
        interval=group.interval,
        max_stale=config.max_stale(group),
        max_shrink=config.max_shrink(group),
        make=make,
        settings=(group, inventory, config.agent.max_stale),
    )


def _needs_macs(config: Config, inventory: Inventory) -> bool:
    """Whether a MAC-keyed map (leases, neighbours) judges by this inventory."""
    return any(
        isinstance(group, DeviceClients)
        and group.inventory == inventory.name
        and group.type in ("dhcp", "neighbours")
        for group in config.clients
    )


def _destination_specs(
    destination: Destination, config: Config, resolver: Resolves | None
) -> list[SourceSpec]:
    found: list[SourceSpec] = []
    if destination.hosts:

        def make_hosts() -> Source:
            from repogate.sources.dns import HostsSource  # noqa: PLC0415

            return HostsSource(destination, _resolver(config, resolver))

        found.append(
            SourceSpec(
                key=f"destination:{destination.name}:hosts",
                kind="hosts",
                group=None,
                destination=destination.name,
                fingerprint="hosts:" + ",".join(sorted(destination.hosts)),
                interval=destination.min_refresh,
                max_stale=None,
                max_shrink=None,
                make=make_hosts,
                settings=(destination, config.resolver),
            )
        )
    feed = destination.feed
    if feed is not None:

        def make_feed() -> Source:
            from repogate.sources.feed import FeedSource  # noqa: PLC0415

            assert feed is not None  # for mypy: captured non-None above
            return FeedSource(feed, name=f"destination:{destination.name}:feed")

        found.append(
            SourceSpec(
                key=f"destination:{destination.name}:feed",
                kind="feed",
                group=None,
                destination=destination.name,
                fingerprint=f"feed:{feed.http.url}:{','.join(feed.products)}",
                interval=feed.interval,
                max_stale=None,
                max_shrink=config.agent.max_shrink,
                make=make_feed,
                settings=feed,
                fallback=_snapshot(destination),
            )
        )
    return found


def _snapshot(destination: Destination) -> Snapshot | None:
    """The preset's packaged ranges, if the feed is still the preset's (same filter)."""
    preset = PRESETS.get(destination.preset or "")
    feed = destination.feed
    if preset is None or feed is None:
        return None
    same_filter = (feed.products, feed.directions) == (
        preset.feed_products,
        preset.feed_directions,
    )
    return preset.snapshot if same_filter else None


def _resolver(config: Config, shared: Resolves | None) -> Resolves:
    """The DNS resolver all DNS sources of a run share (made on first use)."""
    return shared if shared is not None else shared_resolver(config)


def shared_resolver(config: Config) -> Resolves:
    from repogate.sources.resolver import Resolver  # noqa: PLC0415

    settings = config.resolver
    return Resolver(settings.nameservers, port=settings.port, timeout=settings.timeout)


@dataclass(frozen=True)
class Collected:
    """What every source returned, and which failed (source key -> reason)."""

    results: Mapping[str, SourceResult]
    failures: Mapping[str, str] = field(default_factory=dict)


# Sources read without the network: files, and the address maps of devices (local
# files, sockets and the kernel), so a start admits present devices at once.
LOCAL_KINDS = ("static", "file", "wireguard", "openvpn", "dhcp", "neighbours")


def collect(config: Config, *, network: bool = True) -> Collected:
    """Fetch every source once (the CLI's path; the daemon schedules them instead).

    With network=False only local sources are read; the others stay unfetched (their
    last known good applies), for verbs that must answer at once (status, explain).
    """
    all_specs = [spec for spec in specs(config) if network or spec.kind in LOCAL_KINDS]
    if any(spec.kind in ("dns", "hosts") for spec in all_specs):
        shared = _resolver(config, None)  # one resolver for all names
        wanted = {spec.key for spec in all_specs}
        all_specs = [spec for spec in specs(config, shared) if spec.key in wanted]
    results: dict[str, SourceResult] = {}
    failures: dict[str, str] = {}
    for spec in all_specs:
        try:
            results[spec.key] = dataclasses.replace(spec.make().fetch(), fetched_at=time.time())
        except SourceError as exc:
            failures[spec.key] = str(exc)
    return Collected(results, failures)
