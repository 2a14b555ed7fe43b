"""MDM connectors: Intune, Jamf Pro and Fleet read through their APIs into `DeviceRecord`s.

Each vendor module turns its documented JSON into records with the vendor's own
reason for a refusal ("Intune complianceState = noncompliant", "not in Jamf group
'Compliant Macs'", "Fleet policies failing: 12") and its own word for freshness
("last Intune sync"), so `explain` and `devices` can say why in the MDM's terms.
A record that lacks what the decision needs is rejected with its reason; the rest
still applies. Everything shared (tokens, paging limits, throttling, errors) is in
`client`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from repogate.addresses import Rejected
from repogate.config.schema import MdmOptions
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.inventory import ParsedInventory
from repogate.sources.devices.macs import InvalidMacError, normalise_mac
from repogate.sources.devices.mdm.client import ApiClient, ThrottledError

__all__ = ["ApiClient", "ThrottledError", "read_mdm"]

EPOCH_FLOOR = 86400.0 * 365  # earlier than 1971: a placeholder ("0001-01-01"), never synced


def read_mdm(client: ApiClient, options: MdmOptions, *, needs_macs: bool) -> ParsedInventory:
    """Every device the MDM lists, as records; raises SourceError when the listing fails."""
    if options.vendor == "intune":
        from repogate.sources.devices.mdm.intune import read_intune  # noqa: PLC0415

        found = read_intune(client, options, needs_macs=needs_macs)
    elif options.vendor == "jamf":
        from repogate.sources.devices.mdm.jamf import read_jamf  # noqa: PLC0415

        found = read_jamf(client, options)
    else:
        from repogate.sources.devices.mdm.fleet import read_fleet  # noqa: PLC0415

        found = read_fleet(client, options)
    return newest_per_device(*found)


def newest_per_device(
    records: Iterable[tuple[str, DeviceRecord]], rejected: Iterable[Rejected]
) -> ParsedInventory:
    """One record per device: MDMs keep the old record of a re-enrolled device beside
    the new one, and the one synced last is the device as it is now."""
    newest: dict[str, tuple[str, DeviceRecord]] = {}
    dropped = list(rejected)
    for where, record in records:
        kept = newest.get(record.device)
        if kept is None:
            newest[record.device] = (where, record)
            continue
        older, newer = sorted(((where, record), kept), key=lambda item: _age_key(item[1]))
        newest[record.device] = newer
        reason = f"an older record of device {record.device} (re-enrolled?): {newer[0]} is used"
        dropped.append(Rejected(older[0], record.device, reason))
    return ParsedInventory(tuple(record for _, record in newest.values()), tuple(dropped))


class Found:
    """Records and rejections gathered page by page."""

    def __init__(self) -> None:
        self.records: list[tuple[str, DeviceRecord]] = []
        self.rejected: list[Rejected] = []

    def add(
        self,
        items: list[object],
        where: str,
        make: Callable[[dict[str, object]], DeviceRecord],
        serial: Callable[[dict[str, object]], str],
    ) -> None:
        """Each item as a record, or rejected with its place and reason (`make` raises
        ValueError naming what is missing)."""
        for index, item in enumerate(items):
            place = f"{where}[{index}]"
            if not isinstance(item, dict):
                self.rejected.append(Rejected(place, "", "not an object"))
                continue
            try:
                self.records.append((place, make(item)))
            except ValueError as exc:
                self.rejected.append(Rejected(place, serial(item), str(exc)))


def _age_key(record: DeviceRecord) -> float:
    return record.last_seen if record.last_seen is not None else float("-inf")


def timestamp(value: object) -> float | None:
    """Epoch seconds from the vendors' ISO 8601 forms; None for absent or placeholder."""
    if not isinstance(value, str) or not value.strip():
        return None
    moment = datetime.fromisoformat(value.strip())  # ValueError: the caller rejects the record
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    epoch = moment.timestamp()
    return epoch if epoch >= EPOCH_FLOOR else None


def macs_of(values: Iterable[object]) -> tuple[str, ...]:
    """The valid unicast MACs among `values`; empty and malformed ones are left out."""
    found: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            continue
        try:
            mac = normalise_mac(value)
        except InvalidMacError:
            continue
        if mac not in found:
            found.append(mac)
    return tuple(found)


def text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""
