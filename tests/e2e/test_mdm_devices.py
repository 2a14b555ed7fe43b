"""End to end: WireGuard peers judged by an MDM (an Intune stand-in), joined by an
enrolment map, enforced by the daemon in the lab's gateway.

The stand-in runs inside the gateway's namespace, serving Graph's documented shapes
over HTTPS with a throwaway CA, exactly as the daemon would meet Intune: a token
from the authority, managedDevices pages, complianceState and lastSyncDateTime.
What is asserted is what users see: alice's git traffic admitted and mallory's
refused with the reason in Intune's words; alice's open connection cut within one
inventory interval plus a second of Intune marking her non-compliant; a failing
Intune said in status and metrics while its last good records keep deciding; and
the why page telling each device its own verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lab import netns
from lab.config import office_group
from lab.mdm import MdmProcess, start_mdm_standin, write_state
from lab.topology import Lab
from repogate.state import write_atomically
from tests.e2e.test_daemon import (
    OFFICE_WITHOUT_BOB,
    StartDaemon,
    check_enforcing,
    scrape_metrics,
    wait_until,
)
from tests.e2e.test_daemon import configure as configure_lab
from tests.e2e.test_devices import (
    ALICE_TUNNEL,
    ECHO_PORT,
    MALLORY_TUNNEL,
    Tunnels,
    seconds_to_cut,
)

pytestmark = pytest.mark.root

TENANT = "contoso.onmicrosoft.com"
SECRET = "lab-client-s3cret"
INTERVAL = 2.0  # the inventory's: how often Intune is asked
WHY_PORT = 8080
ASK = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/", timeout=5).read().decode())
"""


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def device(serial: str, user: str, state: str, synced: float) -> dict[str, Any]:
    return {
        "id": f"guid-{serial.lower()}",
        "deviceName": f"{user.upper()}-LAPTOP",
        "serialNumber": serial,
        "userPrincipalName": f"{user}@contoso.com",
        "complianceState": state,
        "lastSyncDateTime": iso(synced),
    }


def intune_state(*, alice: str, faults: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    now = time.time()
    return {
        "credentials": {"intune": {"tenant": TENANT, "client_id": "app", "client_secret": SECRET}},
        "token_ttl": 3600,
        "page_size": {"intune": 1},  # two pages: nextLink followed
        "intune": [
            device("SERALICE", "alice", alice, now - 300),
            device("SERMALLORY", "mallory", "compliant", now - 3 * 86400),  # stale record
        ],
        "faults": faults or [],
    }


@pytest.fixture
def intune(daemon_lab: Lab, tmp_path: Path) -> Iterator[MdmProcess]:
    directory = tmp_path / "intune"
    directory.mkdir()
    write_state(directory, intune_state(alice="compliant"))
    started = start_mdm_standin(daemon_lab.gw, directory, "127.0.0.1", python=daemon_lab.python)
    try:
        yield started
    finally:
        started.stop()


def test_intune_decides_who_reaches_bitbucket_and_says_why(
    daemon_lab: Lab, start_daemon: StartDaemon, tunnels: Tunnels, intune: MdmProcess
) -> None:
    lab = daemon_lab
    secret = lab.workdir / "intune.secret"
    write_atomically(secret, SECRET + "\n")
    enrolments = lab.workdir / "enrolments.csv"
    write_atomically(
        enrolments,
        f"device,wireguard\nSERALICE,{tunnels.keys['alice']}\nSERMALLORY,{tunnels.keys['mallory']}\n",
    )
    configure_lab(
        lab,
        {
            "destinations": {"bitbucket": {"ports": [22, 443, ECHO_PORT]}},
            "inventories": [
                {
                    "name": "intune",
                    "type": "intune",
                    "tenant": TENANT,
                    "client_id": "app",
                    "client_secret_file": str(secret),
                    "authority": f"{intune.base}/login",
                    "graph": f"{intune.base}/graph",
                    "ca_file": str(intune.ca_file),
                    "interval": f"{INTERVAL:g}s",
                    "max_age": "24h",
                }
            ],
            "enrolments": [{"inventory": "intune", "path": str(enrolments)}],
            "why": {"listen": f"10.9.0.1:{WHY_PORT}"},
            "clients": [
                office_group(OFFICE_WITHOUT_BOB),
                {
                    "name": "vpn",
                    "type": "wireguard",
                    "interface": tunnels.gateway_if,
                    "inventory": "intune",
                    "interval": "0.5s",
                },
            ],
        },
    )
    daemon = start_daemon()
    daemon.wait_ready()
    ssh = [("bitbucket", 22)]

    def alice_in_mallory_out() -> bool:
        return not check_enforcing(
            lab,
            allowed=[("alice", ALICE_TUNNEL)],
            refused=[("mallory", MALLORY_TUNNEL)],
            targets=ssh,
        )

    assert wait_until(alice_in_mallory_out, 10.0, step=0.3) is not None, daemon.context()
    rows = {r["device"]: r for r in json.loads(lab.repogate("devices", "--json").stdout)}
    assert rows["SERALICE"]["state"] == "admitted", rows
    assert rows["SERMALLORY"]["state"] == "non-compliant", rows
    assert rows["SERMALLORY"]["reason"].startswith("last Intune sync 3 days ago ("), rows
    assert rows["SERMALLORY"]["reason"].endswith("older than max_age 1d"), rows
    refused = lab.repogate("explain", MALLORY_TUNNEL).stdout
    assert "SERMALLORY (mallory@contoso.com)" in refused and "last Intune sync" in refused

    # The why page: mallory asks from her own tunnel address and learns her own verdict.
    page = netns.run(
        netns.in_netns(lab.ns("mallory"), [lab.python, "-c", ASK, "10.9.0.1", str(WHY_PORT)])
    ).stdout
    assert f"Your address: {MALLORY_TUNNEL}" in page, page
    assert "Verdict: REFUSED (non-compliant)" in page and "last Intune sync" in page, page
    assert "SERALICE" not in page and "alice" not in page, page

    # Intune fails: its last good records keep deciding, and status and metrics say so.
    write_state(
        intune.directory,
        intune_state(
            alice="compliant",
            faults=[{"id": "down", "vendor": "intune", "kind": "status", "status": 500}],
        ),
    )

    def says_failing() -> bool:
        return "intune (intune): FAILING since" in lab.repogate("status").stdout

    assert wait_until(says_failing, INTERVAL + 5, step=0.3) is not None, daemon.context()
    assert 'repogate_inventory_up{inventory="intune",type="intune"} 0.0' in scrape_metrics(lab)
    assert alice_in_mallory_out(), daemon.context()
    write_state(intune.directory, intune_state(alice="compliant"))
    recovered = wait_until(
        lambda: "intune (intune): ok" in lab.repogate("status").stdout, INTERVAL + 5, step=0.3
    )
    assert recovered is not None, daemon.context()

    # Intune marks alice non-compliant: her open connection is cut within one interval + 1 s.
    latency = seconds_to_cut(
        lab, daemon, lambda: write_state(intune.directory, intune_state(alice="noncompliant"))
    )
    print(f"Intune non-compliance cut the open connection after {latency:.2f} s")
    assert latency <= INTERVAL + 1.0, daemon.context()
    rows = {r["device"]: r for r in json.loads(lab.repogate("devices", "--json").stdout)}
    assert rows["SERALICE"]["reason"] == "Intune complianceState = noncompliant", rows
    tokens = [r for r in intune.requests("intune") if r.path.endswith("/token")]
    assert len(tokens) == 1, tokens  # one token for the whole run: cached, not re-asked
