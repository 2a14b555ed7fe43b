"""A device group as a source: read the address map, join it with the inventory.

It plugs into the same pipeline as every other client group: its entries are
the addresses of devices admitted right now, and every device refused (not
compliant, stale record, unknown) is a rejected entry with its reason, so the
existing rules apply unchanged: a map that cannot be read keeps the group's
last known good until max_stale, a shrink past max_shrink is held back.

The inventory is read when it changed and shared by every group that names it;
an inventory that cannot be read keeps its last good records for the agent's
max_stale, then refuses everyone (fail closed): that is a successful read of the
group that admits nobody, not a failed one, which would keep the group's own last
known good entries for another max_stale.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from repogate.addresses import Rejected, normalise, parse_entry
from repogate.config.schema import DeviceClients
from repogate.errors import SourceError
from repogate.sources import SourceResult
from repogate.sources.devices import DeviceRecord, Sighting
from repogate.sources.devices.inventory import qualifies
from repogate.sources.devices.join import Qualifies, Verdict, admitted_addresses, join
from repogate.sources.devices.openvpn import OpenvpnStatus
from repogate.sources.devices.reader import InventoryExpiredError, InventoryReader

SAMPLE = 20
MIN_REFRESH = 0.05  # seconds; an inventory due now is read at the next job, not in a loop
log = logging.getLogger("repogate")
# An OpenVPN status file not rewritten for this long means the server is gone (it
# rewrites it every `status FILE N` seconds, 60 by default): the map has failed.
STATUS_MAX_AGE = 180.0


class AddressMap(Protocol):
    """What every map reader returns: who is present, and what it could not read."""

    @property
    def sightings(self) -> tuple[Sighting, ...]: ...

    @property
    def rejected(self) -> tuple[Rejected, ...]: ...


MapReader = Callable[[DeviceClients, float], AddressMap]


class DeviceSource:
    """One device group: who is present on its map, judged against its inventory."""

    def __init__(
        self,
        group: DeviceClients,
        inventory: InventoryReader | None,
        read_map: MapReader | None = None,
    ) -> None:
        self.group = group
        self.inventory = inventory
        self.read_map = read_map or read_address_map
        self.verdicts: tuple[Verdict, ...] = ()  # the last judgement, for devices and explain
        self._admitted: set[str] = set()  # identities admitted at the last read
        self._devices: dict[str, str] = {}  # address -> "device (owner)" at the last read
        self._tunnel_lost_at: float | None = None  # when the group's tunnel last went away

    def tunnel_lost(self, now: float) -> None:
        """The group's interface went down or away (the daemon saw the link event).

        An OpenVPN server that restarts hands its pool addresses out afresh, while its
        status file still lists the old holders until the new server rewrites it: rows
        written before `now` name clients of a server that is gone, so they admit no one
        (otherwise a new holder of an old address would get in meanwhile).
        """
        self._tunnel_lost_at = now

    def signature(self) -> object | None:
        return None  # leases expire and handshakes age: the answer changes with time alone

    def fetch(self) -> SourceResult:
        now = time.time()
        seen = self.read_map(self.group, now)
        lost = self._tunnel_lost_at
        written = seen.updated if isinstance(seen, OpenvpnStatus) else None
        stale_rows = lost is not None and written is not None and written <= lost
        if stale_rows:
            seen = _NoneSeen(seen.rejected)
        by_identity = None
        rejected: list[Rejected] = list(seen.rejected)
        max_age = self.inventory.inventory.max_age if self.inventory is not None else None
        judge: Qualifies = functools.partial(_qualifies, max_age=max_age)
        if self.inventory is not None:
            try:
                records = self.inventory.current(now)
            except InventoryExpiredError as exc:
                records, judge = exc.records, _refuse_all(str(exc))
            by_identity = records.by_identity
            rejected += records.rejected
        self.verdicts = join(seen.sightings, by_identity, judge, now)
        self._disconnect_revoked(seen)
        rejected += [_refusal(v) for v in self.verdicts if not v.admitted]
        admitted = admitted_addresses(self.verdicts)
        entries = normalise(parse_entry(address) for address in admitted)
        current: dict[str, str] = {}
        for verdict in self.verdicts:
            if verdict.record is not None:
                owner = f" ({verdict.record.owner})" if verdict.record.owner else ""
                for address in verdict.sighting.addresses:
                    current[address] = f"{verdict.record.device}{owner}"
        # An address that just left still names its last holder, for the removal's line.
        devices, self._devices = {**self._devices, **current}, current
        return SourceResult(
            entries,
            accepted=len(admitted),
            rejected_count=len(rejected),
            rejected_sample=tuple(rejected[:SAMPLE]),
            origin=f"{self.group.type} {_where(self.group)}",
            devices=devices,
            notes=self._notes() + ((_RESTARTED,) if stale_rows else ()),
            refresh_in=self._refresh_in(now),
        )

    def _refresh_in(self, now: float) -> float | None:
        """Sooner than the map's interval when the inventory falls due before it."""
        due = self.inventory.due_in(now) if self.inventory is not None else None
        if due is None or due >= self.group.interval:
            return None
        return max(due, MIN_REFRESH)

    def _notes(self) -> tuple[str, ...]:
        reader = self.inventory
        if reader is None or reader.failure is None:
            return ()
        return (f"inventory {reader.inventory.name} failing: {reader.failure}",)

    def _disconnect_revoked(self, seen: AddressMap) -> None:
        """With an OpenVPN management socket, a connected client that stops qualifying is
        also disconnected (`client-kill CID HALT`: its client exits rather than retrying),
        beyond its packets being refused."""
        admitted = {v.sighting.identity for v in self.verdicts if v.admitted}
        revoked = self._admitted - admitted
        self._admitted = admitted
        management = self.group.management
        if not revoked or management is None or self.group.type != "openvpn":
            return
        from repogate.sources.devices.openvpn import OpenvpnManagement  # noqa: PLC0415

        present = {v.sighting.identity for v in self.verdicts}
        clients = seen.clients if isinstance(seen, OpenvpnStatus) else ()
        for name in sorted(revoked & present):
            try:
                control = OpenvpnManagement(Path(management))
                ids = [c.client_id for c in clients if c.common_name == name and c.client_id]
                for client_id in ids:
                    control.client_kill(client_id)
                if not ids:
                    control.kill(name)
                log.warning("openvpn: disconnected %s, which no longer qualifies", name)
            except (SourceError, OSError) as exc:
                log.warning("openvpn: cannot disconnect %s through %s: %s", name, management, exc)


_RESTARTED = "the tunnel went down: waiting for the server's first status after it"


@dataclass(frozen=True)
class _NoneSeen:
    """A map that admits no one (what a gone server's status file is worth)."""

    rejected: tuple[Rejected, ...]
    sightings: tuple[Sighting, ...] = ()


def _qualifies(record: DeviceRecord, now: float, *, max_age: float | None) -> tuple[bool, str]:
    return qualifies(record, now=now, max_age=max_age)


def _refuse_all(reason: str) -> Qualifies:
    """The judge once the inventory expired: every record refused, with that reason."""

    def judge(_record: DeviceRecord, _now: float) -> tuple[bool, str]:
        return False, reason

    return judge


def _refusal(verdict: Verdict) -> Rejected:
    sighting = verdict.sighting
    who = f"device {verdict.device}" if verdict.device else "unknown device"
    return Rejected(
        f"{sighting.kind} {sighting.identity}",
        " ".join(sighting.addresses),
        f"{who}: {verdict.reason}",
    )


def _where(group: DeviceClients) -> str:
    found = group.interface or group.status_file or group.leases or ",".join(group.interfaces)
    return str(found or "")


def read_address_map(group: DeviceClients, now: float) -> AddressMap:
    """Read the group's map (each map type imports its own library only when used)."""
    if group.type == "wireguard":
        from repogate.sources.devices.wireguard import read_wireguard  # noqa: PLC0415

        assert group.interface is not None
        return read_wireguard(group.interface, max_handshake_age=group.max_handshake_age, now=now)
    if group.type == "openvpn":
        from repogate.sources.devices.openvpn import read_status_file  # noqa: PLC0415

        assert group.status_file is not None
        return read_status_file(
            group.status_file, now=now, max_age=STATUS_MAX_AGE, interface=group.interface
        )
    if group.type == "dhcp":
        from repogate.sources.devices.leases import read_leases  # noqa: PLC0415

        assert group.leases is not None
        return read_leases(group.leases, lease_format=group.lease_format, now=now)
    from repogate.sources.devices.neighbours import read_neighbours  # noqa: PLC0415

    return read_neighbours(group.interfaces, now=now)
