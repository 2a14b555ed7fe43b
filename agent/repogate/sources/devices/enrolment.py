"""Enrolment maps: which VPN identities (and MACs) belong to which managed device.

An MDM knows a device by its serial number and MACs; a VPN knows a WireGuard key or
a certificate name. An enrolment CSV joins them, one row per device:

    device,wireguard,openvpn
    C02XK1JHJG5H,6b1T...=,anna-laptop

The identities are added to the inventory's record of that device (serials compare
case-insensitively, as vendors print them in either case), so a peer is judged by
its device's MDM record. A row whose device the inventory does not list becomes a
record that refuses with that reason, so `explain` can tell "enrolled, but Intune
has no such device" from an identity nobody enrolled. An identity on two rows
names two devices: neither row's claim is used.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from repogate.addresses import Rejected
from repogate.errors import SourceError
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.inventory import ParsedInventory, row_identities

COLUMNS = ("device", "wireguard", "openvpn", "macs")


@dataclass(frozen=True)
class Enrolment:
    device: str
    where: str  # "enrolments.csv row 3"
    macs: tuple[str, ...] = ()
    wireguard: tuple[str, ...] = ()
    openvpn: tuple[str, ...] = ()

    def identities(self) -> Iterable[tuple[str, str]]:
        for kind in ("macs", "wireguard", "openvpn"):
            for value in getattr(self, kind):
                yield kind, value


def read_enrolments(path: Path) -> tuple[list[Enrolment], list[Rejected]]:
    """Parse one enrolment CSV; SourceError when it is not one at all."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise SourceError(f"cannot read enrolments {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"enrolments {path} is not UTF-8 text: {exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
    except csv.Error as exc:
        raise SourceError(f"enrolments {path}: the header row is not CSV: {exc}") from exc
    if "device" not in header or not set(header) & set(COLUMNS[1:]):
        raise SourceError(
            f"enrolments {path}: the header must name 'device' and at least one of "
            "'wireguard', 'openvpn', 'macs'"
        )
    found: list[Enrolment] = []
    rejected: list[Rejected] = []
    try:
        for cells in reader:
            where = f"{path.name} row {reader.line_num}"
            if not any(cell.strip() for cell in cells):
                continue
            row = dict(zip(header, cells, strict=False))
            device = row.get("device", "").strip()
            if len(cells) != len(header) or not device:
                reason = "no device" if not device else "cell count differs from the header"
                rejected.append(Rejected(where, device, reason))
                continue
            try:
                found.append(Enrolment(device, where, **row_identities(row).__dict__))
            except ValueError as exc:
                rejected.append(Rejected(where, device, str(exc)))
    except csv.Error as exc:
        raise SourceError(f"enrolments {path}: not CSV: {exc}") from exc
    return found, rejected


def enrol(parsed: ParsedInventory, enrolments: list[Enrolment], inventory: str) -> ParsedInventory:
    """The inventory's records with their enrolled identities added."""
    rejected = list(parsed.rejected)
    claims: dict[tuple[str, str], list[Enrolment]] = {}
    for enrolment in enrolments:
        for identity in enrolment.identities():
            claims.setdefault(identity, []).append(enrolment)
    disputed = {identity for identity, rows in claims.items() if len(rows) > 1}
    for identity in sorted(disputed):
        rows = claims[identity]
        places = ", ".join(row.where for row in rows)
        for row in rows:
            reason = f"{identity[0]} {identity[1]} is enrolled for several devices ({places})"
            rejected.append(Rejected(row.where, row.device, reason))
    by_device: dict[str, list[Enrolment]] = {}
    for enrolment in enrolments:
        by_device.setdefault(enrolment.device.upper(), []).append(enrolment)
    records: list[DeviceRecord] = []
    for record in parsed.records:
        rows = by_device.pop(record.device.upper(), [])
        records.append(_with(record, rows, disputed))
    for rows in by_device.values():  # enrolled, but the inventory does not know them
        placeholder = DeviceRecord(
            device=rows[0].device,
            compliant=False,
            refusal=f"enrolled ({rows[0].where}), but inventory {inventory} has no such device",
        )
        records.append(_with(placeholder, rows, disputed))
    return ParsedInventory(tuple(records), tuple(rejected))


def _with(
    record: DeviceRecord, rows: list[Enrolment], disputed: set[tuple[str, str]]
) -> DeviceRecord:
    if not rows:
        return record
    added: dict[str, list[str]] = {
        "macs": list(record.macs),
        "wireguard": list(record.wireguard),
        "openvpn": list(record.openvpn),
    }
    for row in rows:
        for kind, value in row.identities():
            if (kind, value) not in disputed and value not in added[kind]:
                added[kind].append(value)
    return dataclasses.replace(
        record,
        macs=tuple(added["macs"]),
        wireguard=tuple(added["wireguard"]),
        openvpn=tuple(added["openvpn"]),
    )
