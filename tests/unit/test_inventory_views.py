"""What the admin reads about an inventory: status lines, metrics, the why page."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from repogate.cli.main import _check_secrets
from repogate.cli.status import format_status
from repogate.config import parse_config
from repogate.config.schema import DeviceClients, Inventory
from repogate.daemon.listeners import WhyServer
from repogate.daemon.metrics import Metrics
from repogate.devices import inventory_views
from repogate.errors import ConfigError
from repogate.live import EXPIRED, FAILING, OK, InventoryView, LiveView, from_json, summary
from repogate.sources.devices.reader import InventoryReader
from repogate.sources.devices.source import DeviceSource
from tests.unit.conftest import base_dict

INVENTORY = "device,compliant,owner,wireguard\nC02ANNA,true,anna,\nC02BOB,false,bob,\n"


def source_with(tmp_path: Path) -> tuple[DeviceSource, Path]:
    path = tmp_path / "devices.csv"
    path.write_text(INVENTORY)
    reader = InventoryReader(Inventory("it", "csv", path=path), max_stale=600)
    group = DeviceClients("vpn", "wireguard", inventory="it", interface="wg0")
    return DeviceSource(group, reader), path


def test_an_inventory_is_ok_then_failing_then_expired(tmp_path: Path) -> None:
    source, path = source_with(tmp_path)
    assert source.inventory is not None
    source.inventory.current(1000.0)
    (view,) = inventory_views({"vpn": source}, 1000.0)
    assert (view.state, view.records, view.compliant) == (OK, 2, 1)
    path.unlink()
    source.inventory.current(1100.0)
    (view,) = inventory_views({"vpn": source}, 1100.0)
    assert view.state == FAILING and view.expires_at == 1600.0 and "cannot read" in view.error
    (view,) = inventory_views({"vpn": source}, 1700.0)
    assert view.state == EXPIRED


def live(*inventories: InventoryView) -> LiveView:
    return LiveView("repogate", 1, (), (), {}, {}, True, inventories=inventories)


FAILING_VIEW = InventoryView(
    "intune", "intune", FAILING, 120, 98, 0, 1000.0, "Intune: HTTP 503", 1100.0, 4600.0
)


def test_status_says_a_failing_inventory_is_judged_by_its_last_good_records() -> None:
    lines = format_status(live(FAILING_VIEW), {})
    (line,) = [line for line in lines if line.startswith("  intune")]
    assert line.startswith("  intune (intune): FAILING since ")
    assert "(Intune: HTTP 503); judging by its last good records (120 device records, 98" in line
    assert "inventory failing: intune" in summary(live(FAILING_VIEW))
    assert from_json(live(FAILING_VIEW).to_json()).inventories == (FAILING_VIEW,)


def test_metrics_say_up_records_and_freshness() -> None:
    metrics = Metrics()
    ok = InventoryView("jamf", "jamf", OK, 10, 7, 0, 1000.0)
    metrics.inventories([ok, FAILING_VIEW])
    text = generate_latest(metrics.registry).decode()
    assert 'repogate_inventory_up{inventory="jamf",type="jamf"} 1.0' in text
    assert 'repogate_inventory_up{inventory="intune",type="intune"} 0.0' in text
    assert 'repogate_inventory_records{inventory="jamf",qualifies="false"} 3.0' in text
    assert 'repogate_inventory_last_success_timestamp_seconds{inventory="intune"} 1000.0' in text


def test_the_why_page_answers_the_asking_address_only() -> None:
    asked: list[str] = []

    def answer(address: str) -> str:
        asked.append(address)
        return f"Your address: {address}\n"

    server = WhyServer((("127.0.0.1", 0),), answer)
    try:
        (port,) = server.ports
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.read() == b"Your address: 127.0.0.1\n"
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/admin", timeout=5)
        assert caught.value.code == 404
    finally:
        server.close()
    assert asked == ["127.0.0.1"]


def test_why_listen_must_be_the_gateways_own_address() -> None:
    base = base_dict()
    config = parse_config(base | {"why": {"listen": "10.30.0.1:8080"}})
    assert config.why.listen == (("10.30.0.1", 8080),)
    with pytest.raises(ConfigError, match=r"why.listen\[1\]: '0.0.0.0:80': name the gateway"):
        parse_config(base | {"why": {"listen": ["10.30.0.1:8080", "0.0.0.0:80"]}})


def test_check_warns_about_a_secret_anyone_can_read(tmp_path: Path) -> None:

    secret = tmp_path / "jamf.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    document = base_dict()
    document["inventories"] = [
        {
            "name": "jamf",
            "type": "jamf",
            "url": "https://jamf.example.com",
            "client_id": "x",
            "client_secret_file": str(secret),
            "compliant_group": "Compliant Macs",
        }
    ]
    inventory = parse_config(document).inventories["jamf"]
    (warning,) = _check_secrets(inventory)
    assert "is readable by everyone (chmod 0640 and chgrp repogate)" in warning
    secret.chmod(0o640)
    assert _check_secrets(inventory) == []
