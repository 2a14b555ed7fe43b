"""`repogate devices`: every device a group sees or its inventory lists, and its state.

States: admitted; non-compliant (the inventory says so, or the record expired or
is older than max_age); absent (in the inventory, not seen on the network now);
unknown (seen on the network, in no inventory record); contested (an address
claimed by a device that does not qualify). Built from the device sources'
last verdicts, so the daemon and the CLI say the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from repogate.live import EXPIRED, FAILING, NEVER_FETCHED, OK, InventoryView
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.inventory import qualifies
from repogate.sources.devices.join import ADMITTED, CONTESTED, NON_COMPLIANT, UNKNOWN
from repogate.sources.devices.reader import InventoryReader
from repogate.sources.devices.source import DeviceSource

ABSENT = "absent"


@dataclass(frozen=True)
class DeviceRow:
    group: str
    device: str  # "" for an unknown device
    owner: str
    state: str
    identity: str  # "openvpn alice-laptop", "mac aa:bb:..", "wireguard <key>"
    addresses: tuple[str, ...]
    reason: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceRow:
        return cls(**{**data, "addresses": tuple(data.get("addresses", ()))})


def device_rows(sources: Mapping[str, DeviceSource], now: float | None = None) -> list[DeviceRow]:
    """One row per sighting judged, then one per inventory record seen nowhere."""
    now = time.time() if now is None else now
    rows: list[DeviceRow] = []
    seen: set[tuple[str, str]] = set()  # (inventory, device)
    for group, source in sorted(sources.items()):
        for verdict in source.verdicts:
            sighting = verdict.sighting
            record = verdict.record
            rows.append(
                DeviceRow(
                    group=group,
                    device=record.device if record else "",
                    owner=record.owner if record else "",
                    state=verdict.state,
                    identity=f"{sighting.kind} {sighting.identity}",
                    addresses=sighting.addresses,
                    reason=verdict.reason,
                    detail=sighting.detail,
                )
            )
            if record is not None and source.inventory is not None:
                seen.add((source.inventory.inventory.name, record.device))
    for group, source in sorted(sources.items()):
        reader = source.inventory
        if reader is None or reader.last is None:
            continue
        for record in reader.last.records:
            key = (reader.inventory.name, record.device)
            if key in seen:
                continue
            seen.add(key)
            reason = _absent_reason(record, source, now)
            rows.append(DeviceRow(group, record.device, record.owner, ABSENT, "", (), reason))
    return rows


IDENTITY_OF = {"wireguard": "wireguard", "openvpn": "openvpn", "dhcp": "macs", "neighbours": "macs"}


def _absent_reason(record: DeviceRecord, source: DeviceSource, now: float) -> str:
    """Why a listed device is not admitted although nothing refused it on the network:
    nothing of it is seen, or it has no identity this group's map could see."""
    kind = IDENTITY_OF[source.group.type]
    if not getattr(record, kind):
        what = {"macs": "no MAC", "wireguard": "no WireGuard key", "openvpn": "no OpenVPN name"}
        reason = f"{what[kind]} is known for it (add one to the inventory or an enrolment map)"
    else:
        reason = f"absent from the network: no {source.group.type} sighting of it now"
    max_age = source.inventory.inventory.max_age if source.inventory is not None else None
    ok, why = qualifies(record, now=now, max_age=max_age)
    return reason if ok else f"{reason}; and {why}"


def inventory_views(sources: Mapping[str, DeviceSource], now: float) -> tuple[InventoryView, ...]:
    """Every inventory the device groups read, once each, as `status` shows it."""
    readers: dict[str, InventoryReader] = {}
    for source in sources.values():
        if source.inventory is not None:
            readers.setdefault(source.inventory.inventory.name, source.inventory)
    views = []
    for name, reader in sorted(readers.items()):
        last = reader.last
        records = last.records if last is not None else ()
        compliant = reader.qualifying(now)
        if last is None:
            state = NEVER_FETCHED if reader.failure is None else FAILING
        elif reader.failure is None:
            state = OK
        else:
            state = FAILING if now - last.read_at < reader.max_stale else EXPIRED
        views.append(
            InventoryView(
                name=name,
                type=reader.inventory.type,
                state=state,
                records=len(records),
                compliant=compliant,
                rejected=len(last.rejected) if last is not None else 0,
                last_success=last.read_at if last is not None else None,
                error=reader.failure or "",
                stale_since=reader.stale_since,
                expires_at=last.read_at + reader.max_stale if last and reader.failure else None,
            )
        )
    return tuple(views)


ORDER = (ADMITTED, CONTESTED, NON_COMPLIANT, UNKNOWN, ABSENT)


def format_devices(rows: Iterable[DeviceRow]) -> list[str]:
    listed = sorted(rows, key=lambda r: (ORDER.index(r.state), r.group, r.device, r.identity))
    if not listed:
        return ["no device groups, or none has been read yet"]
    lines = []
    for row in listed:
        who = row.device or "(unknown)"
        owner = f" ({row.owner})" if row.owner else ""
        where = f" at {' '.join(row.addresses)}" if row.addresses else ""
        via = f" via {row.identity}" if row.identity else ""
        detail = f", {row.detail}" if row.detail else ""
        lines.append(
            f"{row.state.upper():<13} {who}{owner}{via}{where} [{row.group}]: {row.reason}{detail}"
        )
    return lines


def device_lines_for(address: str, sources: Mapping[str, DeviceSource]) -> list[str]:
    """What `explain ADDRESS` says about the devices holding that address now."""
    lines = []
    for row in device_rows(sources):
        if address in row.addresses:
            who = row.device or "an unknown device"
            owner = f" ({row.owner})" if row.owner else ""
            verdict = "admitted" if row.state == ADMITTED else f"REFUSED ({row.state})"
            lines.append(
                f"{address} is held by {who}{owner} via {row.identity} in group {row.group!r}: "
                f"{verdict}: {row.reason}" + (f"; {row.detail}" if row.detail else "")
            )
    return lines
