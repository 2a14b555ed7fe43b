"""MDM connectors against scripted answers: the vendors' documented shapes in, records
and reasons out; tokens cached and renewed; throttling honoured. (The same connectors
against HTTPS stand-ins of the three APIs: tests/integration/test_mdm.py.)"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repogate.config import parse_config
from repogate.config.schema import HttpOptions, MdmOptions
from repogate.errors import ConfigError, SourceError
from repogate.sources.devices.inventory import qualifies
from repogate.sources.devices.mdm import ApiClient, ThrottledError, read_mdm
from repogate.sources.devices.mdm.client import vendor_detail
from repogate.sources.transport import Call, HttpResponse, HttpStatusError

NOW = 1_795_946_400.0  # 2026-11-29T10:00:00Z
Handler = Callable[[str, Call], Any]


class FakeApi:
    """Answers by URL prefix; records (method, url) of every request, never bodies."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.calls: list[tuple[str, str, str | None]] = []
        self.slept: list[float] = []

    def __call__(self, options: HttpOptions, request: Call) -> HttpResponse:
        self.calls.append((request.method, options.url, request.authorization))
        for prefix, handler in self.routes.items():
            if options.url.startswith(prefix):
                answer = handler(options.url, request)
                return HttpResponse(options.url, json.dumps(answer), 0)
        raise HttpStatusError(f"{options.url}: HTTP 404 Not Found", 404)

    def client(self, options: MdmOptions) -> ApiClient:
        return ApiClient(options, transport=self, clock=lambda: NOW, sleep=self.slept.append)


def tokens(lifetime: int = 3600) -> Handler:
    issued = iter(range(1, 1000))

    def issue(url: str, request: Call) -> Any:
        assert request.method == "POST" and request.body is not None
        form = urllib.parse.parse_qs(request.body.decode())
        assert form["client_secret"] == ["s3cret"] and form["grant_type"] == ["client_credentials"]
        return {"access_token": f"t{next(issued)}", "expires_in": lifetime, "token_type": "Bearer"}

    return issue


def options(tmp_path: Path, vendor: str, **extra: Any) -> MdmOptions:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    base = {
        "intune": "https://graph.test",
        "jamf": "https://jamf.test",
        "fleet": "https://fleet.test",
    }
    return MdmOptions(
        vendor=vendor,  # type: ignore[arg-type]
        http=HttpOptions(base[vendor], token_file=secret if vendor == "fleet" else None),
        authority="https://login.test",
        tenant="contoso.onmicrosoft.com",
        client_id="app",
        client_secret_file=secret,
        **extra,
    )


INTUNE = [
    {
        "id": "d1",
        "deviceName": "ANNA-PC",
        "serialNumber": "SER1",
        "userPrincipalName": "anna@contoso.com",
        "complianceState": "compliant",
        "lastSyncDateTime": "2026-11-29T09:00:00.1234567Z",
        "wiFiMacAddress": None,
    },
    {
        "id": "d2",
        "deviceName": "BOB-PC",
        "serialNumber": "SER2",
        "complianceState": "noncompliant",
        "lastSyncDateTime": "2026-11-29T09:00:00Z",
    },
    {
        "id": "d3",
        "serialNumber": "SER3",
        "complianceState": "compliant",
        "lastSyncDateTime": "2026-11-20T09:00:00Z",
    },
    {"id": "d4", "serialNumber": "SER4", "lastSyncDateTime": "2026-11-29T09:00:00Z"},
]


def graph(devices: list[dict[str, Any]], page: int = 2) -> Handler:
    def answer(url: str, request: Call) -> Any:
        assert request.authorization is not None and request.authorization.startswith("Bearer t")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        if "/managedDevices/" in url:
            device = url.split("/managedDevices/")[1].split("?", maxsplit=1)[0]
            return {"wiFiMacAddress": "A4C3F0123456", "ethernetMacAddress": None, "id": device}
        start = int(query.get("$skiptoken", ["0"])[0])
        found: dict[str, Any] = {"value": devices[start : start + page]}
        if start + page < len(devices):
            found["@odata.nextLink"] = (
                f"https://graph.test/v1.0/deviceManagement/managedDevices?$skiptoken={start + page}"
            )
        return found

    return answer


def test_intune_devices_are_records_with_the_reason_in_intunes_words(tmp_path: Path) -> None:
    api = FakeApi({"https://login.test/": tokens(), "https://graph.test/": graph(INTUNE)})
    parsed = read_mdm(
        api.client(options(tmp_path, "intune")), options(tmp_path, "intune"), needs_macs=False
    )
    records = {r.device: r for r in parsed.records}
    assert set(records) == {"SER1", "SER2", "SER3"}
    assert records["SER1"].compliant and records["SER1"].owner == "anna@contoso.com"
    assert records["SER1"].name == "ANNA-PC" and records["SER1"].macs == ()
    assert qualifies(records["SER2"], now=NOW, max_age=86400) == (
        False,
        "Intune complianceState = noncompliant",
    )
    ok, why = qualifies(records["SER3"], now=NOW, max_age=86400)
    assert not ok and why.startswith("last Intune sync 9 days ago (2026-11-20 09:00:00 UTC)")
    assert [(r.where, r.reason) for r in parsed.rejected] == [
        ("page 2 value[1]", "device d4: no complianceState")
    ]
    token_url = "https://login.test/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert [c[1] for c in api.calls if c[0] == "POST"] == [token_url]  # one token, 2 pages


def test_intune_in_grace_period_counts_only_when_allowed(tmp_path: Path) -> None:
    grace = [{**INTUNE[0], "complianceState": "inGracePeriod"}]
    api = FakeApi({"https://login.test/": tokens(), "https://graph.test/": graph(grace)})
    strict = options(tmp_path, "intune")
    assert not read_mdm(api.client(strict), strict, needs_macs=False).records[0].compliant
    lenient = options(tmp_path, "intune", compliant_states=("compliant", "inGracePeriod"))
    assert read_mdm(api.client(lenient), lenient, needs_macs=False).records[0].compliant


def test_intune_macs_are_fetched_per_device_once_and_cached(tmp_path: Path) -> None:
    api = FakeApi({"https://login.test/": tokens(), "https://graph.test/": graph(INTUNE[:2])})
    mdm = options(tmp_path, "intune")
    client = api.client(mdm)
    first = read_mdm(client, mdm, needs_macs=True)
    assert {r.device: r.macs for r in first.records} == {
        "SER1": ("a4:c3:f0:12:34:56",),
        "SER2": ("a4:c3:f0:12:34:56",),
    }
    per_device = [c for c in api.calls if "/managedDevices/" in c[1]]
    assert len(per_device) == 2 and all(
        "$select=wiFiMacAddress,ethernetMacAddress" in c[1] for c in per_device
    )
    read_mdm(client, mdm, needs_macs=True)
    assert len([c for c in api.calls if "/managedDevices/" in c[1]]) == 2  # cached


def test_a_next_link_to_another_host_is_not_followed(tmp_path: Path) -> None:
    def evil(url: str, request: Call) -> Any:
        return {"value": [], "@odata.nextLink": "https://collector.example/steal"}

    api = FakeApi({"https://login.test/": tokens(), "https://graph.test/": evil})
    mdm = options(tmp_path, "intune")
    with pytest.raises(SourceError, match=r"leaves https://graph\.test: not followed"):
        read_mdm(api.client(mdm), mdm, needs_macs=False)
    assert not any("collector" in c[1] for c in api.calls)


def test_a_token_is_reused_until_near_expiry_and_renewed_after_a_401(tmp_path: Path) -> None:
    now = [NOW]
    refused = {"once": False}

    def listing(url: str, request: Call) -> Any:
        if refused["once"]:
            refused["once"] = False
            raise HttpStatusError("HTTP 401 Unauthorized", 401)
        return {"value": []}

    api = FakeApi({"https://login.test/": tokens(lifetime=300), "https://graph.test/": listing})
    mdm = options(tmp_path, "intune")
    client = ApiClient(mdm, transport=api, clock=lambda: now[0], sleep=api.slept.append)
    read_mdm(client, mdm, needs_macs=False)
    read_mdm(client, mdm, needs_macs=False)
    assert client.tokens_issued == 1
    now[0] += 250  # within the last minute of its five: renewed before use
    read_mdm(client, mdm, needs_macs=False)
    assert client.tokens_issued == 2
    refused["once"] = True
    read_mdm(client, mdm, needs_macs=False)  # t2 refused once: renewed, asked again
    assert client.tokens_issued == 3
    refused["once"] = True
    now[0] += 3600  # a token just issued and refused: reported, not renewed in a loop
    with pytest.raises(SourceError, match="HTTP 401"):
        read_mdm(client, mdm, needs_macs=False)
    assert client.tokens_issued == 4


def test_throttling_short_waits_are_taken_long_ones_end_the_read(tmp_path: Path) -> None:
    answers = iter([HttpStatusError("HTTP 429", 429, retry_after=2), {"value": []}])

    def listing(url: str, request: Call) -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    api = FakeApi({"https://login.test/": tokens(), "https://graph.test/": listing})
    mdm = options(tmp_path, "intune")
    read_mdm(api.client(mdm), mdm, needs_macs=False)
    assert api.slept == [2]

    def busy(url: str, request: Call) -> Any:
        raise HttpStatusError("HTTP 429 Too Many Requests", 429, retry_after=120)

    api = FakeApi({"https://login.test/": tokens(), "https://graph.test/": busy})
    with pytest.raises(ThrottledError) as caught:
        read_mdm(api.client(mdm), mdm, needs_macs=False)
    assert caught.value.wait == 120 and "asked to wait 120 s" in str(caught.value)


def test_bad_credentials_name_the_permission_and_not_the_secret(tmp_path: Path) -> None:
    def refuse(url: str, request: Call) -> Any:
        body = {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided. Trace ID: x",
        }
        raise HttpStatusError(f"{url}: HTTP 401 Unauthorized", 401, detail=json.dumps(body))

    api = FakeApi({"https://login.test/": refuse})
    mdm = options(tmp_path, "intune")
    with pytest.raises(SourceError) as caught:
        read_mdm(api.client(mdm), mdm, needs_macs=False)
    message = str(caught.value)
    assert "invalid_client: AADSTS7000215: Invalid client secret provided." in message
    assert "DeviceManagementManagedDevices.Read.All" in message and "s3cret" not in message


JAMF = [
    {
        "id": "1",
        "general": {
            "name": "Anna's Mac",
            "lastContactTime": "2026-11-29T09:30:00.123Z",
            "remoteManagement": {"managed": True},
        },
        "hardware": {
            "serialNumber": "C02ANNA",
            "macAddress": "AA:BB:CC:00:00:01",
            "altMacAddress": "",
        },
        "groupMemberships": [{"groupId": "3", "groupName": "Compliant Macs", "smartGroup": True}],
        "userAndLocation": {"username": "anna"},
    },
    {
        "id": "2",
        "general": {
            "name": "Bob's Mac",
            "lastContactTime": "2026-11-29T09:30:00Z",
            "remoteManagement": {"managed": True},
        },
        "hardware": {"serialNumber": "C02BOB", "macAddress": "AA:BB:CC:00:00:02"},
        "groupMemberships": [
            {"groupId": "1", "groupName": "All Managed Clients", "smartGroup": True}
        ],
    },
    {
        "id": "3",
        "general": {
            "name": "Old Mac",
            "lastContactTime": "2026-11-29T09:30:00Z",
            "remoteManagement": {"managed": False},
        },
        "hardware": {"serialNumber": "C02OLD"},
        "groupMemberships": [{"groupName": "Compliant Macs"}],
    },
    {"id": "4", "general": None, "hardware": None, "groupMemberships": None},
]


def jamf(computers: list[dict[str, Any]]) -> Handler:
    def answer(url: str, request: Call) -> Any:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert query["section"] == ["GENERAL", "HARDWARE", "GROUP_MEMBERSHIPS", "USER_AND_LOCATION"]
        page, size = int(query["page"][0]), int(query["page-size"][0])
        return {"totalCount": len(computers), "results": computers[page * size : (page + 1) * size]}

    return answer


def test_jamf_membership_of_the_compliant_group_decides(tmp_path: Path) -> None:
    api = FakeApi(
        {"https://jamf.test/api/oauth/token": tokens(), "https://jamf.test/api/v1/": jamf(JAMF)}
    )
    mdm = options(tmp_path, "jamf", compliant_group="Compliant Macs", page_size=3)
    parsed = read_mdm(api.client(mdm), mdm, needs_macs=False)
    records = {r.device: r for r in parsed.records}
    assert records["C02ANNA"].compliant and records["C02ANNA"].owner == "anna"
    assert records["C02ANNA"].macs == ("aa:bb:cc:00:00:01",)
    assert records["C02BOB"].refusal == "not in Jamf Pro group 'Compliant Macs'"
    assert records["C02OLD"].refusal.startswith("not managed by Jamf Pro")
    assert [r.reason for r in parsed.rejected] == ["computer 4: no general or hardware section"]
    assert len([c for c in api.calls if "computers-inventory" in c[1]]) == 2


FLEET = [
    {
        "id": 1,
        "hostname": "anna-mbp",
        "hardware_serial": "F1",
        "primary_mac": "aa:bb:cc:00:00:11",
        "seen_time": "2026-11-29T09:59:00Z",
        "issues": {"failing_policies_count": 0},
        "policies": [
            {"id": 12, "name": "Disk encryption", "response": "pass"},
            {"id": 17, "name": "Firewall", "response": "pass"},
        ],
    },
    {
        "id": 2,
        "hostname": "bob-mbp",
        "hardware_serial": "F2",
        "seen_time": "2026-11-29T09:59:00Z",
        "issues": {"failing_policies_count": 1},
        "policies": [
            {"id": 12, "name": "Disk encryption", "response": "fail"},
            {"id": 17, "name": "Firewall", "response": "pass"},
        ],
    },
    {
        "id": 3,
        "hostname": "new-mbp",
        "hardware_serial": "F3",
        "seen_time": "2026-11-29T09:59:00Z",
        "issues": {"failing_policies_count": 0},
        "policies": [
            {"id": 12, "name": "Disk encryption", "response": "pass"},
            {"id": 17, "name": "Firewall", "response": ""},
        ],
    },
    {"id": 4, "hardware_serial": "F4", "seen_time": "yesterday", "policies": []},
]


def fleet(hosts: list[dict[str, Any]]) -> Handler:
    def answer(url: str, request: Call) -> Any:
        assert request.authorization == "Bearer s3cret"
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert query["populate_policies"] == ["true"]
        page, size = int(query["page"][0]), int(query["per_page"][0])
        return {"hosts": hosts[page * size : (page + 1) * size]}

    return answer


def test_fleet_policies_decide_with_their_ids_in_the_reason(tmp_path: Path) -> None:
    api = FakeApi({"https://fleet.test/": fleet(FLEET)})
    every = options(tmp_path, "fleet", page_size=2)
    parsed = read_mdm(api.client(every), every, needs_macs=False)
    records = {r.device: r for r in parsed.records}
    assert records["F1"].compliant and records["F1"].macs == ("aa:bb:cc:00:00:11",)
    assert records["F2"].refusal == "Fleet policies failing: 12 (Disk encryption)"
    assert records["F3"].compliant  # no policy fails; 17 has not run
    assert parsed.rejected[0].reason.startswith("host 4: seen_time:")
    assert len([c for c in api.calls if "hosts" in c[1]]) == 3  # 2 + 2 + 0
    named = options(tmp_path, "fleet", policies=(17,))
    records = {r.device: r for r in read_mdm(api.client(named), named, needs_macs=False).records}
    assert records["F2"].compliant
    assert records["F3"].refusal == "Fleet policies with no result on this host yet: 17 (Firewall)"


def test_a_re_enrolled_device_is_judged_by_its_newest_record(tmp_path: Path) -> None:
    old = {
        **INTUNE[0],
        "id": "old",
        "complianceState": "noncompliant",
        "lastSyncDateTime": "2026-01-01T00:00:00Z",
    }
    api = FakeApi({"https://login.test/": tokens(), "https://graph.test/": graph([old, INTUNE[0]])})
    mdm = options(tmp_path, "intune")
    parsed = read_mdm(api.client(mdm), mdm, needs_macs=False)
    assert [(r.device, r.compliant) for r in parsed.records] == [("SER1", True)]
    assert "an older record of device SER1" in parsed.rejected[0].reason


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"error": {"code": "Forbidden", "message": "Missing role"}}', "Forbidden: Missing role"),
        (
            json.dumps(
                {
                    "httpStatus": 401,
                    "errors": [{"code": "INVALID_TOKEN", "description": "Unauthorized"}],
                }
            ),
            "INVALID_TOKEN: Unauthorized",
        ),
        (
            json.dumps(
                {
                    "message": "Authentication required",
                    "errors": [{"name": "base", "reason": "Authentication required"}],
                }
            ),
            "Authentication required: Authentication required",
        ),
        ("<html>busy</html>", ""),
    ],
)
def test_vendor_errors_are_read_in_their_documented_shapes(body: str, expected: str) -> None:
    assert vendor_detail(body) == expected


def mdm_config(tmp_path: Path, inventory: dict[str, Any]) -> dict[str, Any]:
    return {
        "destinations": {"bitbucket": {"networks": ["198.51.100.0/24"], "ports": [22]}},
        "inventories": [inventory],
        "clients": [
            {
                "name": "vpn",
                "type": "wireguard",
                "interface": "wg0",
                "inventory": inventory.get("name", "x"),
            }
        ],
    }


def test_mdm_inventories_parse_with_their_own_keys(tmp_path: Path) -> None:
    config = parse_config(
        mdm_config(
            tmp_path,
            {
                "name": "intune",
                "type": "intune",
                "tenant": "contoso.onmicrosoft.com",
                "client_id": "00000000-0000-0000-0000-000000000000",
                "client_secret_file": "/etc/repogate/intune.secret",
                "compliant_states": ["compliant", "inGracePeriod"],
                "max_age": "24h",
            },
        )
    )
    inventory = config.inventories["intune"]
    assert inventory.type == "intune" and inventory.interval == 600
    assert inventory.mdm is not None and inventory.mdm.http.url == "https://graph.microsoft.com"
    assert inventory.mdm.authority == "https://login.microsoftonline.com"


def test_mdm_inventory_mistakes_are_named_by_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            mdm_config(
                tmp_path,
                {
                    "name": "jamf",
                    "type": "jamf",
                    "url": "http://jamf.example.com",
                    "client_id": "x",
                    "tenant": "contoso",
                    "compliant_states": ["compliant"],
                },
            )
        )
    text = str(caught.value)
    assert 'inventories[0].client_secret_file: is required with type = "jamf"' in text
    assert 'inventories[0].compliant_group: is required with type = "jamf"' in text
    assert 'inventories[0].tenant: only applies with type = "intune"' in text
    assert (
        "inventories[0].url: 'http://jamf.example.com': an MDM's API is read over HTTPS only"
        in text
    )


def test_enrolments_must_name_a_defined_inventory(tmp_path: Path) -> None:
    document = mdm_config(
        tmp_path, {"name": "it", "type": "file", "path": "/x.csv", "format": "csv"}
    )
    document["enrolments"] = [{"inventory": "intnue", "path": "/etc/repogate/enrolments.csv"}]
    with pytest.raises(
        ConfigError, match=r"enrolments\[0\].inventory: 'intnue' is not a defined inventory"
    ):
        parse_config(document)
    document["enrolments"] = [{"inventory": "it", "path": "/etc/repogate/enrolments.csv"}]
    assert parse_config(document).inventories["it"].enrolments == (
        Path("/etc/repogate/enrolments.csv"),
    )
