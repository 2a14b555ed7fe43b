"""The host's network as the daemon watches it: egress interfaces, their addresses,
routes, link events (through repogate.rtnl, the one module that imports pyroute2).

pyroute2 0.9 runs its sockets on an asyncio loop owned by the thread that made
them, so the watcher creates its socket inside its own thread; 0.7 (Debian
bookworm) works the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from repogate import rtnl
from repogate.config import Config
from repogate.egress import EgressReport, egress_report, sample_destinations
from repogate.model import DesiredState
from repogate.nft.backend import Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class InterfaceAddress:
    interface: str
    address: str


@dataclass(frozen=True)
class LinkEvent:
    """A change worth reacting to: a link going up or down, an address added or removed."""

    kind: str  # "link-up", "link-down", "address-added", "address-removed", "link-removed"
    interface: str
    address: str | None = None


def _iproute() -> Any:
    return rtnl.iproute()


def default_route_interfaces() -> list[str]:
    """Interfaces holding a default route (IPv4 or IPv6): where traffic leaves the host."""
    with _iproute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        found: set[str] = set()
        for family in (2, 10):  # AF_INET, AF_INET6
            for route in ipr.get_default_routes(family=family):
                index = route.get_attr("RTA_OIF")
                if index in names:
                    found.add(names[index])
                for nexthop in route.get_attr("RTA_MULTIPATH") or []:
                    if nexthop["oif"] in names:
                        found.add(names[nexthop["oif"]])
    return sorted(found)


def egress_interfaces(configured: Iterable[str]) -> list[str]:
    """The interfaces configured (agent.egress_interfaces), or those with a default route."""
    return list(configured) or default_route_interfaces()


def interface_addresses(interfaces: Iterable[str] | None) -> list[InterfaceAddress]:
    """Global-scope addresses of the named interfaces (None: of every interface)."""
    wanted = set(interfaces) if interfaces is not None else None
    result: list[InterfaceAddress] = []
    with _iproute() as ipr:
        names: dict[int, str] = {
            link["index"]: str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()
        }
        for message in ipr.get_addr():
            name = names.get(message["index"])
            # RT_SCOPE_UNIVERSE only; IPv6 privacy (temporary) addresses rotate daily and
            # are not what an allowlist should hold (IFA_F_TEMPORARY is 0x01 for AF_INET6).
            temporary = message["family"] == 10 and message["flags"] & 0x01
            if name is None or (wanted is not None and name not in wanted):
                continue
            if message["scope"] == 0 and not temporary:
                address = message.get_attr("IFA_ADDRESS") or message.get_attr("IFA_LOCAL")
                if address:
                    result.append(InterfaceAddress(name, address))
    return sorted(result)


def route_to(address: str) -> InterfaceAddress | None:
    """The interface and source address the kernel would use to reach `address` now
    (`ip route get`), or None when there is no route."""
    with _iproute() as ipr:
        try:
            routes = ipr.route("get", dst=address)
        except Exception:
            return None
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    for route in routes:
        source = route.get_attr("RTA_PREFSRC")
        interface = names.get(route.get_attr("RTA_OIF"))
        if source and interface:
            return InterfaceAddress(interface, source)
    return None


def read_egress(config: Config, desired: DesiredState | None, backend: Backend) -> EgressReport:
    """The egress report from this host's routes, addresses and other tables' NAT."""

    def route(address: str) -> tuple[str, str] | None:
        found = route_to(address)
        return (found.interface, found.address) if found is not None else None

    addresses = [(a.interface, a.address) for a in interface_addresses(None)]
    return egress_report(
        config,
        sample_destinations(desired, config),
        route,
        addresses,
        backend.nat_rules(config.agent.table),
    )


class LinkWatcher:
    """Calls `on_event` for link and address changes, from a daemon thread."""

    def __init__(self, on_event: Callable[[LinkEvent], None]) -> None:
        self._on_event = on_event
        self._thread = threading.Thread(target=self._run, name="link-watcher", daemon=True)
        self._ready = threading.Event()
        self._states: dict[int, tuple[str, bool]] = {}
        self.failed: str | None = None

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        self._ready.wait(timeout)

    def _run(self) -> None:
        try:
            ipr = _iproute()
            ipr.bind(groups=rtnl.link_and_address_groups())
            for link in ipr.get_links():
                self._states[link["index"]] = (link.get_attr("IFLA_IFNAME"), _is_up(link))
        except Exception as exc:  # any failure just disables the watcher
            self.failed = str(exc)
            log.warning("link watcher disabled: %s", exc)
            self._ready.set()
            return
        self._ready.set()
        while True:
            try:
                messages = ipr.get()
            except Exception as exc:  # the watcher must never take the daemon down
                self.failed = str(exc)
                log.warning("link watcher stopped: %s", exc)
                return
            for message in messages:
                for link_event in self._translate(message):
                    try:
                        self._on_event(link_event)
                    except Exception:
                        log.exception("link event handler failed")

    def _translate(self, message: Any) -> list[LinkEvent]:
        kind = message.get("event")
        index = message.get("index")
        if kind == "RTM_NEWLINK":
            name = message.get_attr("IFLA_IFNAME")
            up = _is_up(message)
            previous = self._states.get(index)
            self._states[index] = (name, up)
            if previous is None or previous[1] != up:
                return [LinkEvent("link-up" if up else "link-down", name)]
        elif kind == "RTM_DELLINK":
            name = self._states.pop(index, (message.get_attr("IFLA_IFNAME"), False))[0]
            return [LinkEvent("link-removed", name)]
        elif kind in ("RTM_NEWADDR", "RTM_DELADDR"):
            name = self._states.get(index, (str(index), False))[0]
            address = message.get_attr("IFA_ADDRESS") or message.get_attr("IFA_LOCAL")
            added = kind == "RTM_NEWADDR"
            return [LinkEvent("address-added" if added else "address-removed", name, address)]
        return []


def _is_up(link: Any) -> bool:
    operstate = link.get_attr("IFLA_OPERSTATE")
    if operstate in ("UP", "UNKNOWN"):  # UNKNOWN: tunnels and loopback that do not report
        return bool(link["flags"] & 1)  # IFF_UP
    return False
