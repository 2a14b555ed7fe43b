"""The kernel's neighbour table (ARP and NDP) as an address map: MAC -> IPv4 and IPv6.

The one place besides daemon/netlink.py that uses pyroute2. The pure part (a netlink
message's fields -> a `Neighbour`, a `NeighbourTable` that turns updates into
present/gone events and sightings) needs no kernel; the I/O part reads the table
(`read_neighbours`) and follows it (`NeighbourWatcher`).

Which states mean "present":
- REACHABLE, DELAY, PROBE: the kernel has lately heard from the MAC at that address.
- STALE counts too. An idle laptop's entry goes STALE within a minute; if that
  unadmitted it, its next `git push` would be refused before the kernel confirmed the
  entry again. STALE still maps the address to the MAC that last used it: a new
  holder of the address that sends through this host replaces the MAC at once. How
  long ago the entry was confirmed is in the sighting's detail.
- INCOMPLETE, FAILED and NONE are not (no MAC, or it stopped answering).
- NOARP (multicast, broadcast, point-to-point links) and PERMANENT (`ip neigh add ...
  nud permanent`) are not: they are configuration, present whether or not the device
  is. A device pinned with a static entry needs a static client group instead.
Link-local addresses (fe80::/10, 169.254.0.0/16) are left out: they never leave the
link, so they never reach Bitbucket through this host.

The watcher reads its own netlink socket (pyroute2 only parses the bytes): pyroute2
0.9's IPRoute reads on an asyncio loop and queues messages where select() cannot see
them, so a watcher that must stop within a second on either 0.7 or 0.9 owns its socket.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from repogate import rtnl
from repogate.addresses import Rejected, canonical_address, element_order
from repogate.errors import SourceError
from repogate.sources.devices import Sighting
from repogate.sources.devices.macs import InvalidMacError, normalise_mac

log = logging.getLogger(__name__)

# NUD_* states (include/uapi/linux/neighbour.h).
STATES = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}
PRESENT = 0x02 | 0x04 | 0x08 | 0x10
_RTMGRP_LINK = 0x1
_RTMGRP_NEIGH = 0x4
_USER_HZ = 100  # NDA_CACHEINFO ages are in clock ticks (USER_HZ, 100 on Linux)
_POLL = 0.2  # seconds a watcher waits on its socket before checking it should stop


@dataclass(frozen=True)
class NeighbourMessage:
    """The fields of an RTM_NEWNEIGH/RTM_DELNEIGH message that matter here."""

    event: str  # "RTM_NEWNEIGH", "RTM_DELNEIGH"
    ifindex: int
    state: int
    address: str | None  # NDA_DST
    lladdr: str | None  # NDA_LLADDR
    confirmed: float | None = None  # seconds since the kernel last confirmed the entry


@dataclass(frozen=True)
class Neighbour:
    """A MAC the kernel sees at an address on an interface, in a present state."""

    interface: str
    address: str  # canonical (repogate.addresses)
    mac: str  # normalised
    state: str  # "REACHABLE", "STALE", ...
    confirmed: float | None = None


@dataclass(frozen=True)
class NeighbourEvent:
    """An address on an interface gained a MAC ("present") or lost it ("gone")."""

    kind: Literal["present", "gone"]
    interface: str
    address: str
    mac: str


Key = tuple[str, str]  # (interface, address): what the kernel keys its entries by


def translate(
    message: NeighbourMessage, names: Mapping[int, str], interfaces: Collection[str]
) -> tuple[Key, Neighbour | None] | None:
    """The entry a message is about and what it now holds (None: nobody present).

    None overall when the message is outside the map: another interface, a link-local
    or unusable address. A present state with an unreadable MAC holds nobody.
    """
    interface = names.get(message.ifindex)
    if interface is None or interface not in interfaces or message.address is None:
        return None
    found = canonical_address(message.address)
    if found is None or _link_local(found[1]):
        return None
    key = (interface, found[1])
    if message.event != "RTM_NEWNEIGH" or not message.state & PRESENT or not message.lladdr:
        return key, None
    try:
        mac = normalise_mac(message.lladdr)
    except InvalidMacError:
        return key, None
    state = STATES.get(message.state & PRESENT, hex(message.state))
    return key, Neighbour(interface, found[1], mac, state, message.confirmed)


def _link_local(address: str) -> bool:
    return address.startswith(("169.254.", "fe8", "fe9", "fea", "feb"))


def sightings(neighbours: Iterable[Neighbour]) -> tuple[Sighting, ...]:
    """One sighting per MAC and interface, holding all its addresses there."""
    grouped: dict[tuple[str, str], list[Neighbour]] = {}
    for neighbour in neighbours:
        grouped.setdefault((neighbour.mac, neighbour.interface), []).append(neighbour)
    result: list[Sighting] = []
    for (mac, interface), held in sorted(grouped.items()):
        addresses = tuple(sorted({n.address for n in held}, key=element_order))
        freshest = min(held, key=lambda n: (n.confirmed is None, n.confirmed or 0.0))
        detail = f"neighbour {freshest.state}"
        if freshest.confirmed is not None:
            detail += f", confirmed {freshest.confirmed:.0f} s ago"
        result.append(Sighting("mac", mac, addresses, detail, interface))
    return tuple(result)


class NeighbourTable:
    """The present entries, updated message by message; reports only real changes.

    The kernel notifies every state change (REACHABLE -> STALE -> DELAY ...): those
    keep the same MAC at the same address and are not events. A new MAC at an
    address is two events: the old one gone, the new one present.
    """

    def __init__(self) -> None:
        self._entries: dict[Key, Neighbour] = {}

    def apply(self, key: Key, neighbour: Neighbour | None) -> list[NeighbourEvent]:
        old = self._entries.pop(key, None)
        if neighbour is not None:
            self._entries[key] = neighbour
        events: list[NeighbourEvent] = []
        if old is not None and (neighbour is None or neighbour.mac != old.mac):
            events.append(NeighbourEvent("gone", old.interface, old.address, old.mac))
        if neighbour is not None and (old is None or neighbour.mac != old.mac):
            events.append(NeighbourEvent("present", *key, neighbour.mac))
        return events

    def replace(self, neighbours: Iterable[Neighbour]) -> list[NeighbourEvent]:
        """Take a full dump (a start or a resync after lost messages); events for the diff."""
        fresh = {(n.interface, n.address): n for n in neighbours}
        events: list[NeighbourEvent] = []
        for key in sorted(self._entries.keys() - fresh.keys()):
            events += self.apply(key, None)
        for key, neighbour in sorted(fresh.items()):
            events += self.apply(key, neighbour)
        return events

    def drop_interface(self, interface: str) -> list[NeighbourEvent]:
        events: list[NeighbourEvent] = []
        for key in sorted(key for key in self._entries if key[0] == interface):
            events += self.apply(key, None)
        return events

    def neighbours(self) -> list[Neighbour]:
        return list(self._entries.values())


# --- I/O: pyroute2 ---------------------------------------------------------------


def message_fields(message: Any) -> NeighbourMessage:
    """Read a pyroute2 ndmsg (0.7 or 0.9) into plain fields."""
    cacheinfo = message.get_attr("NDA_CACHEINFO")
    confirmed = cacheinfo["ndm_confirmed"] / _USER_HZ if cacheinfo else None
    return NeighbourMessage(
        event=str(message.get("event")),
        ifindex=int(message["ifindex"]),
        state=int(message["state"]),
        address=message.get_attr("NDA_DST"),
        lladdr=message.get_attr("NDA_LLADDR"),
        confirmed=confirmed,
    )


def _iproute() -> Any:
    return rtnl.iproute()


def _dump(
    interfaces: Collection[str], iproute: Callable[[], Any]
) -> tuple[dict[int, str], list[Neighbour]]:
    """The interface names by index, and the present neighbours on `interfaces`."""
    with iproute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        found: list[Neighbour] = []
        for message in ipr.get_neighbours():
            translated = translate(message_fields(message), names, interfaces)
            if translated is not None and translated[1] is not None:
                found.append(translated[1])
    return names, found


@dataclass(frozen=True)
class NeighbourMap:
    sightings: tuple[Sighting, ...]
    rejected: tuple[Rejected, ...] = ()  # always empty: the kernel's table is well formed


def read_neighbours(
    interfaces: Iterable[str], *, now: float | None = None, iproute: Callable[[], Any] = _iproute
) -> NeighbourMap:
    """The MACs present now on the named interfaces, with their addresses.

    `now` is accepted like every address map's reader, and unused: the kernel's own
    states say what is current. An interface that does not exist yet has no entries.
    """
    del now
    try:
        _, found = _dump(frozenset(interfaces), iproute)
    except OSError as exc:
        raise SourceError(f"cannot read the neighbour table: {exc}") from exc
    return NeighbourMap(sightings(found))


class NeighbourWatcher:
    """Follows the neighbour table of the named interfaces from a daemon thread.

    `on_event` is called for every present/gone change (after the initial dump, which
    `snapshot()` holds and which makes no events). Messages lost to a full socket
    buffer (ENOBUFS) are made good by a fresh dump, reported as the difference.
    `close()` returns within a second.
    """

    def __init__(
        self,
        interfaces: Iterable[str],
        on_event: Callable[[NeighbourEvent], None],
        *,
        iproute: Callable[[], Any] = _iproute,
    ) -> None:
        self._interfaces = frozenset(interfaces)
        self._on_event = on_event
        self._iproute = iproute
        self._table = NeighbourTable()
        self._lock = threading.Lock()  # guards _table: the thread writes, snapshot() reads
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neighbour-watcher", daemon=True)
        self.failed: str | None = None

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        self._ready.wait(timeout)

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def snapshot(self) -> tuple[Sighting, ...]:
        with self._lock:
            return sightings(self._table.neighbours())

    def _run(self) -> None:
        try:
            parser = rtnl.rtnl_parser()
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except Exception as exc:  # any failure just disables the watcher
            self.failed = str(exc)
            log.warning("neighbour watcher disabled: %s", exc)
            self._ready.set()
            return
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((0, _RTMGRP_LINK | _RTMGRP_NEIGH))  # before the dump: no gap
                sock.settimeout(_POLL)
                self._resync(False)
            except Exception as exc:
                self.failed = str(exc)
                log.warning("neighbour watcher disabled: %s", exc)
                self._ready.set()
                return
            self._ready.set()
            self._loop(sock, parser)

    def _loop(self, sock: socket.socket, marshal: Any) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped messages for us
                    log.warning("neighbour watcher missed messages; reading the table again")
                    self._safely(self._resync, True)
                    continue
                self.failed = str(exc)
                log.warning("neighbour watcher stopped: %s", exc)
                return
            for message in marshal.parse(data):
                self._safely(self._handle, message)

    def _safely(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception:  # the watcher must never take the daemon down
            log.exception("neighbour watcher: handling a change failed")

    def _resync(self, report: bool) -> None:
        self._names, found = _dump(self._interfaces, self._iproute)
        with self._lock:
            events = self._table.replace(found)
        if report:
            self._emit(events)

    def _handle(self, message: Any) -> None:
        event = message.get("event")
        if event == "RTM_NEWLINK":
            self._names[message["index"]] = message.get_attr("IFLA_IFNAME")
            return
        if event == "RTM_DELLINK":
            name = self._names.pop(message["index"], None)
            if name is not None:
                with self._lock:
                    events = self._table.drop_interface(name)
                self._emit(events)
            return
        if event not in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
            return
        translated = translate(message_fields(message), self._names, self._interfaces)
        if translated is not None:
            with self._lock:
                events = self._table.apply(*translated)
            self._emit(events)

    def _emit(self, events: Iterable[NeighbourEvent]) -> None:
        for event in events:
            try:
                self._on_event(event)
            except Exception:
                log.exception("neighbour event handler failed")
