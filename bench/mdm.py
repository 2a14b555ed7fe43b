"""MDM benchmark: reading a 10,000-device inventory from each vendor's API stand-in.

Run: `.venv/bin/python bench/mdm.py` (no root; loopback only). The lab's HTTPS
stand-ins (lab/mdm.py) serve 10,000 devices in each vendor's documented shape and
paging (Graph pages of 1,000 with @odata.nextLink; Jamf and Fleet pages of 500),
and repogate's reader (token, pages, parsing, one record per device) reads them,
median of 5 runs. The baseline in the same run is the bare transfer: the same
pages fetched with repogate's HTTP client and json.loads, no record built, so the
ratio is what turning vendor JSON into judged records costs on top of the network.
Also: one unchanged re-read (the daemon's steady state every `interval`).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "agent"), str(REPO)]

from lab.mdm import MdmStandIn, mdm_standin  # noqa: E402
from repogate.config.schema import HttpOptions, Inventory, MdmOptions  # noqa: E402
from repogate.sources.devices.mdm import ApiClient  # noqa: E402
from repogate.sources.devices.reader import InventoryReader  # noqa: E402

DEVICES = 10_000
RUNS = 5
SECRET = "bench-secret"


def state() -> dict[str, object]:
    now = "2026-11-29T10:00:00.0000000Z"
    return {
        "credentials": {
            "intune": {"tenant": "t", "client_id": "a", "client_secret": SECRET},
            "jamf": {"client_id": "a", "client_secret": SECRET},
            "fleet": {"token": SECRET},
        },
        "page_size": {"intune": 1000, "jamf": 500, "fleet": 500},
        "intune": [
            {
                "id": f"guid-{n}",
                "deviceName": f"PC-{n}",
                "serialNumber": f"SER{n:06d}",
                "userPrincipalName": f"user{n}@contoso.com",
                "complianceState": "compliant" if n % 10 else "noncompliant",
                "lastSyncDateTime": now,
            }
            for n in range(DEVICES)
        ],
        "jamf": [
            {
                "id": str(n),
                "general": {
                    "name": f"mac-{n}",
                    "lastContactTime": now[:23] + "Z",
                    "remoteManagement": {"managed": True},
                },
                "hardware": {"serialNumber": f"C02{n:06d}", "macAddress": "AA:BB:CC:00:00:01"},
                "groupMemberships": [{"groupId": "1", "groupName": "Compliant Macs"}],
            }
            for n in range(DEVICES)
        ],
        "fleet": [
            {
                "id": n + 1,
                "hostname": f"h{n}",
                "hardware_serial": f"F{n:06d}",
                "primary_mac": "aa:bb:cc:00:00:02",
                "seen_time": now[:19] + "Z",
                "issues": {"failing_policies_count": 0},
                "policies": [{"id": 12, "name": "Disk encryption", "response": "pass"}],
            }
            for n in range(DEVICES)
        ],
    }


def reader(standin: MdmStandIn, vendor: str, secret: Path) -> InventoryReader:
    url = {"intune": standin.graph, "jamf": standin.jamf_url, "fleet": standin.fleet_url}[vendor]
    http = HttpOptions(
        url,
        ca_file=Path(standin.ca_file),
        timeout=30.0,
        token_file=secret if vendor == "fleet" else None,
        max_bytes=64 << 20,
    )
    options = MdmOptions(
        vendor,
        http,
        authority=standin.intune_authority,
        tenant="t",
        client_id="a",
        client_secret_file=secret,
        compliant_group="Compliant Macs",
        page_size=500,
    )
    return InventoryReader(Inventory(vendor, "csv", mdm=options, interval=1.0), 3600)


def bare_pages(found: InventoryReader) -> int:
    """The baseline: the same pages through the same API client (token, TLS, JSON),
    counted, with no record built or judged."""
    options = found.inventory.mdm
    assert options is not None
    client = ApiClient(options)
    base = options.http.url
    if options.vendor == "intune":
        count, url = 0, f"{base}/v1.0/deviceManagement/managedDevices?$select=id"
        while url:
            body = client.get(url)
            count += len(body["value"])
            url = body.get("@odata.nextLink")
        return count
    count, page, key = 0, 0, "results" if options.vendor == "jamf" else "hosts"
    while True:
        path = (
            f"/api/v1/computers-inventory?section=GENERAL&section=HARDWARE"
            f"&section=GROUP_MEMBERSHIPS&page={page}&page-size=500"
            if options.vendor == "jamf"
            else f"/api/v1/fleet/hosts?page={page}&per_page=500&populate_policies=true"
        )
        items = client.get(base + path)[key]
        count += len(items)
        page += 1
        if len(items) < 500:
            return count


SECRET_FILE = Path(tempfile.mkdtemp()) / "secret"


def main() -> int:
    SECRET_FILE.write_text(SECRET + "\n")
    with tempfile.TemporaryDirectory() as directory, mdm_standin(Path(directory)) as standin:
        standin.write_state(state())
        print(f"{DEVICES} devices per vendor, median of {RUNS} runs")
        for vendor in ("intune", "jamf", "fleet"):
            bare, full = [], []
            for _ in range(RUNS):
                found = reader(standin, vendor, SECRET_FILE)
                started = time.perf_counter()
                assert bare_pages(found) == DEVICES
                bare.append(time.perf_counter() - started)
                started = time.perf_counter()
                records = found.current(time.time()).records
                full.append(time.perf_counter() - started)
                assert len(records) == DEVICES, (vendor, len(records))
            b, f = statistics.median(bare), statistics.median(full)
            shown = f"read and judged {f:6.2f} s   bare pages {b:6.2f} s   ratio {f / b:4.2f}"
            print(f"{vendor:>6}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
