"""Jamf Pro: the computers inventory, and membership of the group that means compliant.

`GET /api/v1/computers-inventory` with the GENERAL, HARDWARE, GROUP_MEMBERSHIPS and
USER_AND_LOCATION sections, paged (`page` from 0, `page-size`, sorted by id so pages
do not shift while read) until `totalCount` records are in. Jamf Pro has no
compliance field: a computer is compliant while it is managed and a member of
`compliant_group` (a smart group whose criteria are the admin's compliance rules).
`general.lastContactTime` is the record's freshness.
"""

from __future__ import annotations

import logging
import math

from repogate.addresses import Rejected
from repogate.config.schema import MdmOptions
from repogate.errors import SourceError
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.mdm import Found, macs_of, text, timestamp
from repogate.sources.devices.mdm.client import ApiClient

log = logging.getLogger("repogate")
SECTIONS = ("GENERAL", "HARDWARE", "GROUP_MEMBERSHIPS", "USER_AND_LOCATION")


def read_jamf(
    client: ApiClient, options: MdmOptions
) -> tuple[list[tuple[str, DeviceRecord]], list[Rejected]]:
    sections = "&".join(f"section={name}" for name in SECTIONS)
    size = options.page_size
    found = Found()
    total: int | None = None
    page = 0
    read = 0
    while total is None or read < total:
        url = (
            f"{options.http.url}/api/v1/computers-inventory?{sections}"
            f"&page={page}&page-size={size}&sort=id%3Aasc"
        )
        document = client.get(url)
        if not isinstance(document, dict) or not isinstance(document.get("results"), list):
            raise SourceError(f"Jamf Pro: page {page} of computers-inventory has no 'results'")
        count = document.get("totalCount")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise SourceError(f"Jamf Pro: page {page} has no valid totalCount")
        total = count if total is None else total
        results = document["results"]
        if not results:
            if read < total:
                raise SourceError(
                    f"Jamf Pro: page {page} is empty after {read} of {total} computers "
                    "(changed while read?)"
                )
            break
        found.add(results, f"page {page} results", lambda item: _record(item, options), _serial)
        read += len(results)
        page += 1
        if page > math.ceil(total / size) + 1:
            break  # a server that never stops paging: what was read is all there is
    _check_group_exists(found.records, options, total or 0)
    return found.records, found.rejected


def _record(item: dict[str, object], options: MdmOptions) -> DeviceRecord:
    general = item.get("general")
    hardware = item.get("hardware")
    computer = text(item.get("id"))
    if not isinstance(general, dict) or not isinstance(hardware, dict):
        raise ValueError(f"computer {computer or '?'}: no general or hardware section")
    memberships = item.get("groupMemberships")
    if not isinstance(memberships, list):
        raise ValueError(f"computer {computer or '?'}: no groupMemberships section")
    groups = {text(group.get("groupName")) for group in memberships if isinstance(group, dict)}
    management = general.get("remoteManagement")
    managed = isinstance(management, dict) and management.get("managed") is True
    try:
        contact = timestamp(general.get("lastContactTime"))
    except ValueError as exc:
        raise ValueError(f"computer {computer}: lastContactTime: {exc}") from exc
    refusal = ""
    if not managed:
        refusal = "not managed by Jamf Pro (remoteManagement.managed is not true)"
    elif options.compliant_group not in groups:
        refusal = f"not in Jamf Pro group {options.compliant_group!r}"
    user = item.get("userAndLocation")
    owner = ""
    if isinstance(user, dict):
        owner = text(user.get("username")) or text(user.get("email"))
    return DeviceRecord(
        device=_serial(item) or f"jamf-{computer}",
        compliant=not refusal,
        owner=owner,
        name=text(general.get("name")),
        refusal=refusal,
        seen_as="last Jamf contact",
        last_seen=contact,
        macs=macs_of((hardware.get("macAddress"), hardware.get("altMacAddress"))),
    )


def _serial(item: dict[str, object]) -> str:
    hardware = item.get("hardware")
    return text(hardware.get("serialNumber")) if isinstance(hardware, dict) else ""


def _check_group_exists(
    records: list[tuple[str, DeviceRecord]], options: MdmOptions, total: int
) -> None:
    """No computer at all in the compliant group is most often a misspelt group name.
    Every device is refused all the same (the records say so; failing the read would
    keep the last good records, which is failing open), and the log says why."""
    if total and records and all(r.refusal.startswith("not in Jamf") for _, r in records):
        log.warning(
            "Jamf Pro: none of %d computers is in group %r: is the name right "
            "(it is matched exactly)? Every device is refused.",
            total,
            options.compliant_group,
        )
