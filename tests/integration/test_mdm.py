"""The three MDM connectors against HTTPS stand-ins of their APIs (lab.mdm).

Each stand-in follows its vendor's documented shapes: OAuth2 token endpoints that
issue expiring tokens (Entra ID, Jamf Pro), Fleet's API token, paged listings
(@odata.nextLink, page/totalCount, page/per_page), and the faults real networks and
vendors produce: 429 with Retry-After, 500, a truncated body, a missing page, a
record missing fields. What is asserted is what the admin gets: records and
reasons, the last good records kept (and said) while a read fails, and every
device refused once they are past max_stale.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lab.mdm import STATE, MdmStandIn, mdm_standin
from repogate.config.schema import HttpOptions, Inventory, MdmOptions
from repogate.errors import SourceError
from repogate.sources.devices.inventory import qualifies
from repogate.sources.devices.reader import InventoryReader

TENANT = "contoso.onmicrosoft.com"
SECRET = "s3cret-value"
DAY = 86400.0


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def intune_device(n: int, state: str, synced: float) -> dict[str, Any]:
    return {
        "id": f"0000000{n}-aaaa-bbbb-cccc-00000000000{n}",
        "deviceName": f"LAPTOP-{n}",
        "serialNumber": f"SER{n}",
        "userPrincipalName": f"user{n}@contoso.com",
        "complianceState": state,
        "lastSyncDateTime": iso(synced),
        "wiFiMacAddress": f"A4C3F012345{n}",
        "ethernetMacAddress": None,
    }


def jamf_computer(n: int, groups: list[str], contact: float) -> dict[str, Any]:
    return {
        "id": str(n),
        "general": {
            "name": f"mac-{n}",
            "lastContactTime": iso(contact),
            "remoteManagement": {"managed": True},
        },
        "hardware": {"serialNumber": f"C02{n}", "macAddress": f"AA:BB:CC:DD:EE:0{n}"},
        "groupMemberships": [{"groupId": str(i), "groupName": g} for i, g in enumerate(groups)],
        "userAndLocation": {"username": f"user{n}"},
    }


def fleet_host(n: int, response: str, seen: float) -> dict[str, Any]:
    return {
        "id": n,
        "hostname": f"host-{n}",
        "hardware_serial": f"F{n}",
        "primary_mac": f"aa:bb:cc:dd:ee:1{n}",
        "seen_time": iso(seen),
        "status": "online",
        "issues": {"failing_policies_count": int(response == "fail")},
        "policies": [{"id": 12, "name": "Disk encryption", "response": response}],
    }


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[MdmStandIn]:
    with mdm_standin(tmp_path / "mdm") as started:
        now = time.time()
        started.write_state(
            {
                "credentials": {
                    "intune": {"tenant": TENANT, "client_id": "app", "client_secret": SECRET},
                    "jamf": {"client_id": "jamf-app", "client_secret": SECRET},
                    "fleet": {"token": SECRET},
                },
                "token_ttl": 3600,
                "page_size": {"intune": 2, "jamf": 100, "fleet": None},
                "intune": [
                    intune_device(1, "compliant", now - 600),
                    intune_device(2, "noncompliant", now - 600),
                    intune_device(3, "compliant", now - 3 * DAY),
                ],
                "jamf": [
                    jamf_computer(1, ["All Managed Clients", "Compliant Macs"], now - 60),
                    jamf_computer(2, ["All Managed Clients"], now - 60),
                ],
                "fleet": [fleet_host(1, "pass", now - 30), fleet_host(2, "fail", now - 30)],
                "faults": [],
            }
        )
        yield started


def read_state(standin: MdmStandIn) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((Path(standin.directory) / STATE).read_text())
    return document


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    return path


def reader(standin: MdmStandIn, tmp_path: Path, vendor: str, **extra: Any) -> InventoryReader:
    secret = secret_file(tmp_path)
    url = {"intune": standin.graph, "jamf": standin.jamf_url, "fleet": standin.fleet_url}[vendor]
    http = HttpOptions(
        url,
        ca_file=Path(standin.ca_file),
        token_file=secret if vendor == "fleet" else None,
        timeout=2.0,
    )
    options = MdmOptions(
        vendor=vendor,  # type: ignore[arg-type]
        http=http,
        authority=standin.intune_authority,
        tenant=TENANT,
        client_id="jamf-app" if vendor == "jamf" else "app",
        client_secret_file=secret,
        compliant_group="Compliant Macs",
        page_size=extra.pop("page_size", 100),
    )
    settings: dict[str, Any] = {"interval": 600.0, "max_age": DAY} | extra
    inventory = Inventory(vendor, "csv", mdm=options, **settings)
    return InventoryReader(inventory, max_stale=3600)


def reasons(found: InventoryReader, now: float) -> dict[str, str]:
    records = found.current(now).records
    return {r.device: qualifies(r, now=now, max_age=DAY)[1] for r in records}


def test_intune_records_pages_reasons_and_one_token(standin: MdmStandIn, tmp_path: Path) -> None:
    intune = reader(standin, tmp_path, "intune")
    now = time.time()
    found = reasons(intune, now)
    assert found["SER1"].startswith("compliant per inventory, last Intune sync 10 min ago")
    assert found["SER2"] == "Intune complianceState = noncompliant"
    assert found["SER3"].startswith("last Intune sync 3 days ago (")
    assert found["SER3"].endswith("older than max_age 1d")
    intune.current(now + 601)  # due again: a second read with the cached token
    seen = standin.requests("intune")
    assert sum(1 for r in seen if r.path.endswith("/token")) == 1
    assert sum(1 for r in seen if r.path.endswith("/managedDevices")) == 4  # 2 pages, twice


def test_intune_macs_come_from_per_device_reads(standin: MdmStandIn, tmp_path: Path) -> None:
    intune = reader(standin, tmp_path, "intune")
    intune.needs_macs = True
    records = {r.device: r for r in intune.current(time.time()).records}
    assert records["SER1"].macs == ("a4:c3:f0:12:34:51",)
    assert ("mac", "a4:c3:f0:12:34:52") in intune.current(time.time()).by_identity


def test_jamf_and_fleet_decide_by_group_and_policy(standin: MdmStandIn, tmp_path: Path) -> None:
    now = time.time()
    assert reasons(reader(standin, tmp_path, "jamf"), now) == {
        "C021": "compliant per inventory, last Jamf contact 60 s ago",
        "C022": "not in Jamf Pro group 'Compliant Macs'",
    }
    fleet = reasons(reader(standin, tmp_path, "fleet"), now)
    assert fleet["F2"] == "Fleet policies failing: 12 (Disk encryption)"
    assert fleet["F1"].startswith("compliant per inventory, last seen by Fleet")


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ({"kind": "status", "status": 500}, "HTTP 500"),
        ({"kind": "truncate"}, "closed after"),
        ({"kind": "not_found", "path_contains": "skiptoken"}, "HTTP 404"),
        ({"kind": "reset"}, "Intune"),
    ],
)
def test_a_failing_read_keeps_the_last_good_records_and_says_so(
    standin: MdmStandIn, tmp_path: Path, fault: dict[str, Any], said: str
) -> None:
    intune = reader(standin, tmp_path, "intune")
    now = time.time()
    good = intune.current(now)
    state = read_state(standin)
    standin.write_state({**state, "faults": [{"id": "f", "vendor": "intune", **fault}]})
    kept = intune.current(now + 601)
    assert kept.records == good.records and kept.read_at == good.read_at
    assert intune.failure is not None and said in intune.failure, intune.failure
    assert intune.stale_since == now + 601
    with pytest.raises(SourceError, match="past max_stale"):
        intune.current(now + 3601)


def test_a_429_is_not_asked_again_before_retry_after(standin: MdmStandIn, tmp_path: Path) -> None:
    fleet = reader(standin, tmp_path, "fleet", interval=1)
    now = time.time()
    fleet.current(now)
    state = read_state(standin)
    throttle = {"id": "slow", "vendor": "fleet", "kind": "rate_limit", "retry_after": 120}
    standin.write_state({**state, "faults": [throttle]})
    fleet.current(now + 2)
    assert fleet.failure is not None and "asked to wait 120 s" in fleet.failure
    asked = len(standin.requests("fleet"))
    fleet.current(now + 60)  # due by its interval, but Fleet asked for two minutes
    assert len(standin.requests("fleet")) == asked
    standin.write_state({**state, "faults": []})
    fleet.current(now + 123)
    assert fleet.failure is None


def test_an_expired_token_is_renewed_without_a_failed_read(
    standin: MdmStandIn, tmp_path: Path
) -> None:
    jamf = reader(standin, tmp_path, "jamf")
    now = time.time()
    jamf.current(now)
    state = read_state(standin)
    standin.write_state(
        {**state, "faults": [{"id": "x", "vendor": "jamf", "kind": "expire_tokens"}]}
    )
    jamf.current(now + 601)
    assert jamf.failure is None
    tokens = [r for r in standin.requests("jamf") if r.path.endswith("/oauth/token")]
    assert len(tokens) == 2


def test_a_record_missing_fields_is_rejected_and_the_rest_applies(
    standin: MdmStandIn, tmp_path: Path
) -> None:
    state = read_state(standin)
    broken = {k: v for k, v in state["intune"][0].items() if k != "complianceState"}
    standin.write_state({**state, "intune": [broken, *state["intune"][1:]]})
    records = reader(standin, tmp_path, "intune").current(time.time())
    assert {r.device for r in records.records} == {"SER2", "SER3"}
    assert [r.reason for r in records.rejected] == [
        "device 00000001-aaaa-bbbb-cccc-000000000001: no complianceState"
    ]


def test_a_wrong_secret_says_which_permission_and_never_the_secret(
    standin: MdmStandIn, tmp_path: Path
) -> None:
    intune = reader(standin, tmp_path, "intune")
    (tmp_path / "secret").write_text("wrong\n")
    with pytest.raises(SourceError) as caught:
        intune.current(time.time())
    message = str(caught.value)
    assert "invalid_client" in message and "DeviceManagementManagedDevices.Read.All" in message
    assert SECRET not in message and "wrong" not in message
