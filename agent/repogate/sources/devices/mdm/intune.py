"""Microsoft Intune through Microsoft Graph v1.0: managed devices and their compliance.

`GET /v1.0/deviceManagement/managedDevices` with `$select`, following `@odata.nextLink`
(only on Graph's own origin: the token goes nowhere else). `complianceState` decides,
against the configured `compliant_states`; `lastSyncDateTime` is the record's
freshness. Graph documents `wiFiMacAddress` and `ethernetMacAddress` as null in list
responses, so when a MAC-keyed map (DHCP leases, neighbours) uses the inventory they
are fetched per device with `$select` and cached: MACs do not change with syncs, so
a device is asked again only after MAC_REFRESH, and at most MAX_MAC_FETCHES per read
so a first read of a large tenant cannot run into Graph's throttling all at once.
"""

from __future__ import annotations

import time
import urllib.parse

from repogate.addresses import Rejected
from repogate.config.schema import MdmOptions
from repogate.errors import SourceError
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.mdm import macs_of, text, timestamp
from repogate.sources.devices.mdm.client import ApiClient, ThrottledError, same_origin

FIELDS = (
    "id",
    "deviceName",
    "serialNumber",
    "userPrincipalName",
    "complianceState",
    "lastSyncDateTime",
    "operatingSystem",
)
MAC_FIELDS = ("wiFiMacAddress", "ethernetMacAddress")
MAX_PAGES = 10_000
MAC_REFRESH = 86400.0
MAX_MAC_FETCHES = 500


def read_intune(
    client: ApiClient, options: MdmOptions, *, needs_macs: bool
) -> tuple[list[tuple[str, DeviceRecord]], list[Rejected]]:
    select = ",".join(FIELDS)
    base = options.http.url
    url: str | None = f"{base}/v1.0/deviceManagement/managedDevices?$select={select}"
    records: list[tuple[str, DeviceRecord]] = []
    rejected: list[Rejected] = []
    devices: list[tuple[str, dict[str, object]]] = []
    for page in range(MAX_PAGES):
        if url is None:
            break
        document = client.get(url)
        if not isinstance(document, dict) or not isinstance(document.get("value"), list):
            raise SourceError(f"Intune: page {page + 1} of managedDevices has no 'value' list")
        for index, item in enumerate(document["value"]):
            where = f"page {page + 1} value[{index}]"
            if isinstance(item, dict):
                devices.append((where, item))
            else:
                rejected.append(Rejected(where, "", "not an object"))
        link = document.get("@odata.nextLink")
        if link is not None and (not isinstance(link, str) or not same_origin(link, base)):
            raise SourceError(f"Intune: @odata.nextLink leaves {base}: not followed")
        url = link
    else:
        raise SourceError(f"Intune: more than {MAX_PAGES} pages of managedDevices")
    macs = _macs(client, base, [item for _, item in devices]) if needs_macs else {}
    for where, item in devices:
        try:
            records.append((where, _record(item, options, macs)))
        except ValueError as exc:
            rejected.append(Rejected(where, text(item.get("serialNumber")), str(exc)))
    return records, rejected


def _record(
    item: dict[str, object], options: MdmOptions, macs: dict[str, tuple[str, ...]]
) -> DeviceRecord:
    device_id = text(item.get("id"))
    if not device_id:
        raise ValueError("no id")
    state = item.get("complianceState")
    if not isinstance(state, str) or not state:
        raise ValueError(f"device {device_id}: no complianceState")
    try:
        synced = timestamp(item.get("lastSyncDateTime"))
    except ValueError as exc:
        raise ValueError(f"device {device_id}: lastSyncDateTime: {exc}") from exc
    compliant = state in options.compliant_states
    return DeviceRecord(
        device=text(item.get("serialNumber")) or device_id,
        compliant=compliant,
        owner=text(item.get("userPrincipalName")),
        name=text(item.get("deviceName")),
        refusal="" if compliant else f"Intune complianceState = {state}",
        seen_as="last Intune sync",
        last_seen=synced,
        macs=macs.get(device_id, ()),
    )


def _macs(
    client: ApiClient, base: str, devices: list[dict[str, object]]
) -> dict[str, tuple[str, ...]]:
    """Each device's MACs, from the cache or fetched one by one (a throttle stops the
    fetching for this read, not the read: the rest are asked next time)."""
    cache = client.macs
    now = time.monotonic()
    ids = [text(item.get("id")) for item in devices if text(item.get("id"))]
    due = [i for i in ids if i not in cache or now - cache[i][1] > MAC_REFRESH]
    select = ",".join(MAC_FIELDS)
    for device_id in due[:MAX_MAC_FETCHES]:
        quoted = urllib.parse.quote(device_id, safe="")
        try:
            found = client.get(
                f"{base}/v1.0/deviceManagement/managedDevices/{quoted}?$select={select}"
            )
        except ThrottledError:
            break
        except SourceError:
            continue  # a device deleted since the listing: no MACs, judged without them
        values = [found.get(name) for name in MAC_FIELDS] if isinstance(found, dict) else []
        cache[device_id] = (macs_of(values), now)
    known = set(ids)
    for stale in [i for i in cache if i not in known]:
        del cache[stale]
    return {i: cache[i][0] for i in ids if i in cache}
