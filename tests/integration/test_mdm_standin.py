"""The MDM stand-in (lab.mdm) against a plain stdlib client: it must answer as the vendors do.

No root, no network: the stand-in listens on 127.0.0.1 with a throwaway CA. The client here
is http.client and ssl only, so a bug in the connectors under test cannot hide one here.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from lab.mdm import MdmStandIn, mdm_standin, start_mdm_standin

TENANT = "contoso.onmicrosoft.com"
SECRETS = {"intune": "intune-s3cret", "jamf": "jamf-s3cret", "fleet": "fleet-api-t0ken"}
INTUNE = [
    {
        "id": f"0000000{n}-aaaa-bbbb-cccc-00000000000{n}",
        "deviceName": f"LAPTOP-{n}",
        "serialNumber": f"SER{n}",
        "userPrincipalName": f"user{n}@contoso.com",
        "complianceState": state,
        "lastSyncDateTime": "2026-11-29T10:00:00.1234567Z",
        "wiFiMacAddress": f"A4C3F012345{n}",
        "ethernetMacAddress": "",
        "managedDeviceOwnerType": "company",
        "operatingSystem": "Windows",
    }
    for n, state in ((1, "compliant"), (2, "noncompliant"), (3, "inGracePeriod"))
]
JAMF = [
    {
        "id": str(n),
        "udid": f"UDID-{n}",
        "general": {"name": f"mac-{n}", "lastContactTime": "2026-11-29T10:00:00.123Z"},
        "hardware": {"serialNumber": f"C02{n}", "macAddress": f"AA:BB:CC:DD:EE:0{n}"},
        "groupMemberships": [{"groupId": "3", "groupName": "Compliant Macs", "smartGroup": True}],
        "userAndLocation": {"username": f"user{n}", "email": f"user{n}@contoso.com"},
    }
    for n in (10, 2, 3)  # ids sort as numbers: 2, 3, 10
]
FLEET = [
    {
        "id": n,
        "hostname": f"host-{n}",
        "hardware_serial": f"F{n}",
        "primary_mac": f"aa:bb:cc:dd:ee:0{n}",
        "seen_time": "2026-11-29T10:00:00Z",
        "issues": {"failing_policies_count": 0, "total_issues_count": 0},
        "policies": [{"id": 12, "name": "Disk encryption", "critical": False, "response": "pass"}],
    }
    for n in (1, 2, 3)
]


def state(**overrides: Any) -> dict[str, Any]:
    credentials = {
        "intune": {"tenant": TENANT, "client_id": "app-1", "client_secret": SECRETS["intune"]},
        "jamf": {"client_id": "jamf-1", "client_secret": SECRETS["jamf"]},
        "fleet": {"token": SECRETS["fleet"]},
    }
    return {
        "credentials": credentials,
        "token_ttl": 3600,
        "page_size": {"intune": 2, "jamf": 100, "fleet": None},
        "intune": INTUNE,
        "jamf": JAMF,
        "fleet": FLEET,
        "faults": [],
    } | overrides


DEVICES = "/v1.0/deviceManagement/managedDevices"
INVENTORY = "/api/v1/computers-inventory"
HOSTS = "/api/v1/fleet/hosts"
SECTIONS = "section=GENERAL&section=HARDWARE&section=GROUP_MEMBERSHIPS"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: Any


@dataclass(frozen=True)
class Client:
    """http.client with the stand-in's CA: one fresh connection per request."""

    ca_file: Path

    def request(
        self, method: str, url: str, *, form: dict[str, str] | None = None, token: str = ""
    ) -> Reply:
        parts = urlsplit(url)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        connection = http.client.HTTPSConnection(parts.netloc, context=context, timeout=3)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = None
        if form is not None:
            body, headers["Content-Type"] = urlencode(form), "application/x-www-form-urlencoded"
        try:
            connection.request(method, f"{parts.path}?{parts.query}", body=body, headers=headers)
            response = connection.getresponse()
            return Reply(response.status, response.headers, json.loads(response.read()))
        finally:
            connection.close()

    def get(self, url: str, token: str = "") -> Reply:
        return self.request("GET", url, token=token)

    def post(self, url: str, form: dict[str, str]) -> Reply:
        return self.request("POST", url, form=form)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MdmStandIn]:
    with mdm_standin(tmp_path_factory.mktemp("mdm")) as started:
        yield started


@pytest.fixture
def standin(running: MdmStandIn) -> MdmStandIn:
    running.write_state(state())
    return running


@pytest.fixture
def client(running: MdmStandIn) -> Client:
    return Client(running.ca_file)


def intune_token(standin: MdmStandIn, secret: str = SECRETS["intune"]) -> Reply:
    form = {"client_id": "app-1", "client_secret": secret, "grant_type": "client_credentials"}
    form["scope"] = "https://graph.microsoft.com/.default"
    url = f"{standin.intune_authority}/{TENANT}/oauth2/v2.0/token"
    return Client(standin.ca_file).post(url, form)


def jamf_token(standin: MdmStandIn, secret: str = SECRETS["jamf"]) -> Reply:
    form = {"grant_type": "client_credentials", "client_id": "jamf-1", "client_secret": secret}
    return Client(standin.ca_file).post(f"{standin.jamf_url}/api/oauth/token", form)


def test_intune_lists_in_pages_with_macs_null(standin: MdmStandIn, client: Client) -> None:
    token = intune_token(standin)
    assert token.status == 200
    assert (token.body["token_type"], token.body["expires_in"]) == ("Bearer", 3600)
    bearer = token.body["access_token"]
    first = client.get(f"{standin.graph}{DEVICES}?$select=id,deviceName,wiFiMacAddress", bearer)
    assert first.status == 200
    context = f"{standin.graph}/v1.0/$metadata#deviceManagement/managedDevices"
    assert first.body["@odata.context"] == context
    assert first.body["value"] == [
        {"id": device["id"], "deviceName": device["deviceName"], "wiFiMacAddress": None}
        for device in INTUNE[:2]
    ]
    next_link = urlsplit(first.body["@odata.nextLink"])
    assert f"{next_link.scheme}://{next_link.netloc}{next_link.path}" == f"{standin.graph}{DEVICES}"
    assert parse_qs(next_link.query)["$select"] == ["id,deviceName,wiFiMacAddress"]
    second = client.get(first.body["@odata.nextLink"], bearer)
    assert [device["deviceName"] for device in second.body["value"]] == ["LAPTOP-3"]
    assert "@odata.nextLink" not in second.body


def test_a_single_intune_device_carries_its_macs(standin: MdmStandIn, client: Client) -> None:
    bearer = intune_token(standin).body["access_token"]
    device = f"{standin.graph}{DEVICES}/{INTUNE[0]['id']}"
    reply = client.get(f"{device}?$select=wiFiMacAddress,ethernetMacAddress", bearer)
    assert reply.status == 200
    assert {k: v for k, v in reply.body.items() if not k.startswith("@")} == {
        "id": INTUNE[0]["id"],
        "wiFiMacAddress": "A4C3F0123451",
        "ethernetMacAddress": "",
    }
    missing = client.get(f"{standin.graph}{DEVICES}/no-such-device", bearer)
    assert (missing.status, missing.body["error"]["code"]) == (404, "ResourceNotFound")


def test_jamf_pages_with_a_total_and_only_the_asked_sections(
    standin: MdmStandIn, client: Client
) -> None:
    token = jamf_token(standin)
    assert token.status == 200 and token.body["scope"] == "api-role:1"
    url = f"{standin.jamf_url}{INVENTORY}?{SECTIONS}&page-size=2&sort=id%3Aasc"
    pages = [client.get(f"{url}&page={n}", token.body["access_token"]).body for n in (0, 1)]
    assert [page["totalCount"] for page in pages] == [3, 3]
    records = pages[0]["results"] + pages[1]["results"]
    assert [record["id"] for record in records] == ["2", "3", "10"]
    assert records[0]["general"]["name"] == "mac-2"
    assert records[0]["hardware"]["macAddress"] == "AA:BB:CC:DD:EE:02"
    assert records[0]["groupMemberships"][0]["groupName"] == "Compliant Macs"
    assert records[0]["userAndLocation"] is None


def test_fleet_pages_until_a_short_page(standin: MdmStandIn, client: Client) -> None:
    url = f"{standin.fleet_url}{HOSTS}?per_page=2&order_key=id"
    token = SECRETS["fleet"]
    pages = [
        client.get(f"{url}&page={n}&populate_policies=true", token).body["hosts"] for n in (0, 1, 2)
    ]
    assert [[host["id"] for host in page] for page in pages] == [[1, 2], [3], []]
    assert pages[0][0]["policies"][0]["response"] == "pass"
    assert "policies" not in client.get(f"{url}&page=0", token).body["hosts"][0]


def test_bad_credentials_get_each_vendors_refusal(standin: MdmStandIn, client: Client) -> None:
    intune = intune_token(standin, "wrong")
    assert (intune.status, intune.body["error"]) == (401, "invalid_client")
    assert intune.body["error_codes"] == [7000215]
    assert intune.body["error_description"].startswith("AADSTS7000215: Invalid client secret")
    jamf = jamf_token(standin, "wrong")
    assert (jamf.status, jamf.body) == (401, {"error": "invalid_client"})
    fleet = client.get(f"{standin.fleet_url}{HOSTS}", "wrong")
    reason = "Authentication required"
    refusal = {"message": reason, "errors": [{"name": "base", "reason": reason}]}
    assert (fleet.status, fleet.body) == (401, refusal)
    url = f"{standin.intune_authority}/fabrikam.example/oauth2/v2.0/token"
    tenant = client.post(url, {"grant_type": "client_credentials"})
    assert (tenant.status, tenant.body["error"]) == (400, "invalid_request")
    assert tenant.body["error_description"].startswith("AADSTS90002: Tenant 'fabrikam.example'")


def test_tokens_expire_after_their_ttl(standin: MdmStandIn, client: Client) -> None:
    standin.write_state(state(token_ttl=1))
    graph, jamf = intune_token(standin).body, jamf_token(standin).body
    assert graph["expires_in"] == jamf["expires_in"] == 1
    assert client.get(f"{standin.graph}{DEVICES}", graph["access_token"]).status == 200
    time.sleep(1.1)
    expired = client.get(f"{standin.graph}{DEVICES}", graph["access_token"])
    assert (expired.status, expired.body["error"]["code"]) == (401, "InvalidAuthenticationToken")
    assert expired.body["error"]["message"] == "Access token has expired or is not yet valid."
    expired = client.get(f"{standin.jamf_url}{INVENTORY}", jamf["access_token"])
    error = {"code": "INVALID_TOKEN", "description": "Unauthorized", "id": "0", "field": None}
    assert (expired.status, expired.body) == (401, {"httpStatus": 401, "errors": [error]})


def test_a_rate_limit_answers_429_with_retry_after_then_clears(
    standin: MdmStandIn, client: Client
) -> None:
    fault: dict[str, Any] = {"id": "throttle", "vendor": "intune", "kind": "rate_limit"}
    fault |= {"path_contains": "managedDevices", "count": 1, "retry_after": 7}
    standin.write_state(state(faults=[fault]))
    bearer = intune_token(standin).body["access_token"]  # /login: the fault does not match it
    throttled = client.get(f"{standin.graph}{DEVICES}", bearer)
    assert (throttled.status, throttled.headers["Retry-After"]) == (429, "7")
    assert throttled.body["error"]["code"] == "TooManyRequests"
    standin.write_state(state(faults=[fault]))  # a rewrite does not re-arm a spent fault
    assert client.get(f"{standin.graph}{DEVICES}", bearer).status == 200
    seen = [(request.status, request.fault) for request in standin.requests("intune")]
    assert seen[-3:] == [(200, None), (429, "throttle"), (200, None)]


def test_a_truncated_body_ends_short(standin: MdmStandIn, client: Client) -> None:
    fault = {"id": "cut", "vendor": "fleet", "path_contains": "page=1", "kind": "truncate"}
    standin.write_state(state(faults=[fault | {"count": 1}]))
    with pytest.raises(http.client.IncompleteRead):
        client.get(f"{standin.fleet_url}{HOSTS}?page=1&per_page=1", SECRETS["fleet"])
    assert client.get(f"{standin.fleet_url}{HOSTS}?page=1&per_page=1", SECRETS["fleet"]).body


def test_expire_tokens_and_reset(standin: MdmStandIn, client: Client) -> None:
    revoke = {"id": "revoke", "vendor": "jamf", "path_contains": INVENTORY}
    hangup = {"id": "hangup", "vendor": "fleet", "path_contains": "", "count": 1}
    faults = [revoke | {"kind": "expire_tokens"}, hangup | {"kind": "reset"}]
    standin.write_state(state(faults=faults))
    url = f"{standin.jamf_url}{INVENTORY}"
    assert client.get(url, jamf_token(standin).body["access_token"]).status == 401
    assert client.get(url, jamf_token(standin).body["access_token"]).status == 200  # once only
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        client.get(f"{standin.fleet_url}{HOSTS}", SECRETS["fleet"])


def test_the_log_keeps_no_secret_or_token(standin: MdmStandIn, client: Client) -> None:
    bearer = intune_token(standin).body["access_token"]
    client.get(f"{standin.graph}{DEVICES}?$select=id", bearer)
    seen = [(r.method, r.path, r.authorization) for r in standin.requests("intune")[-2:]]
    assert seen == [
        ("POST", f"/login/{TENANT}/oauth2/v2.0/token", False),
        ("GET", f"/graph{DEVICES}", True),
    ]
    log = (standin.directory / "requests.jsonl").read_text()
    assert SECRETS["intune"] not in log and bearer not in log and "$select" in log


def test_as_a_process_it_serves_then_stops_on_sigterm(tmp_path: Path) -> None:
    process = start_mdm_standin(None, tmp_path)
    try:
        process.write_state(state())
        reply = Client(process.ca_file).get(f"{process.fleet_url}{HOSTS}", SECRETS["fleet"])
        assert (reply.status, len(reply.body["hosts"])) == (200, 3)
        assert [request.status for request in process.requests("fleet")] == [200]
    finally:
        started = time.monotonic()
        process.stop()
    assert process.process.proc.returncode == 0 and time.monotonic() - started < 1.5
