"""Device groups through the whole pipeline: config, inventory file, map, join, entries."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from repogate.addresses import Rejected
from repogate.config import DeviceClients, parse_config
from repogate.errors import ConfigError
from repogate.sources import specs
from repogate.sources.devices import Sighting
from repogate.sources.devices.openvpn import OpenvpnStatus, parse_status
from repogate.sources.devices.source import DeviceSource, InventoryReader
from tests.unit.conftest import base_dict

CSV = """device,compliant,owner,openvpn,last_seen
C02ALICE,true,alice,alice-laptop,{recent}
C02MALLORY,false,mallory,mallory-laptop,{recent}
"""


class Seen:
    def __init__(self, *sightings: Sighting) -> None:
        self.sightings = sightings
        self.rejected: tuple[Rejected, ...] = ()


def config_with(tmp_path: Path, inventory_text: str) -> Any:
    devices = tmp_path / "devices.csv"
    devices.write_text(inventory_text)
    document = base_dict()
    document["inventories"] = [
        {"name": "it", "type": "file", "path": str(devices), "format": "csv", "max_age": "7d"}
    ]
    document["clients"].append(
        {
            "name": "ovpn",
            "type": "openvpn",
            "status_file": str(tmp_path / "status.log"),
            "interface": "tun0",
            "inventory": "it",
        }
    )
    return parse_config(document), devices


def ovpn(cn: str, address: str) -> Sighting:
    return Sighting("openvpn", cn, (address,), "connected", "tun0")


def device_source(config: Any, sightings: Seen) -> DeviceSource:
    group = config.group("ovpn")
    assert isinstance(group, DeviceClients)
    inventory = InventoryReader(config.inventories["it"], max_stale=3600)
    return DeviceSource(group, inventory, read_map=lambda _group, _now: sightings)


def test_only_compliant_present_devices_are_admitted_and_every_refusal_says_why(
    tmp_path: Path,
) -> None:
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config, _ = config_with(tmp_path, CSV.format(recent=recent))
    seen = Seen(
        ovpn("alice-laptop", "10.8.0.2"),
        ovpn("mallory-laptop", "10.8.0.3"),
        ovpn("eve", "10.8.0.4"),
    )
    result = device_source(config, seen).fetch()
    assert result.entries.addresses_v4 == {"10.8.0.2"}
    reasons = {r.where: r.reason for r in result.rejected_sample}
    assert "device C02MALLORY" in reasons["openvpn mallory-laptop"]
    assert "non-compliant" in reasons["openvpn mallory-laptop"]
    assert reasons["openvpn eve"].startswith("unknown device")


def test_flipping_compliant_in_the_inventory_revokes_at_the_next_read(tmp_path: Path) -> None:
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config, devices = config_with(tmp_path, CSV.format(recent=recent))
    source = device_source(config, Seen(ovpn("alice-laptop", "10.8.0.2")))
    assert source.fetch().entries.addresses_v4 == {"10.8.0.2"}
    devices.write_text(CSV.format(recent=recent).replace("C02ALICE,true", "C02ALICE,false"))
    os.utime(devices, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime for sure
    assert source.fetch().entries.addresses_v4 == frozenset()


def test_an_unreadable_inventory_keeps_its_last_records_until_max_stale(tmp_path: Path) -> None:
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config, devices = config_with(tmp_path, CSV.format(recent=recent))
    source = device_source(config, Seen(ovpn("alice-laptop", "10.8.0.2")))
    source.fetch()
    devices.unlink()
    assert source.fetch().entries.addresses_v4 == {"10.8.0.2"}  # last good records
    assert source.inventory is not None and source.inventory.failure is not None


def test_an_inventory_past_max_stale_refuses_every_device_rather_than_failing(
    tmp_path: Path,
) -> None:
    """Not a failed group read: that would keep the group's own last known good entries
    (for another max_stale) while `status` says every device is refused."""
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config, devices = config_with(tmp_path, CSV.format(recent=recent))
    group = config.group("ovpn")
    assert isinstance(group, DeviceClients)
    inventory = InventoryReader(config.inventories["it"], max_stale=0.0)  # expires at once
    seen = Seen(ovpn("alice-laptop", "10.8.0.2"))
    source = DeviceSource(group, inventory, read_map=lambda _group, _now: seen)
    assert source.fetch().entries.addresses_v4 == {"10.8.0.2"}
    devices.unlink()
    result = source.fetch()
    assert result.entries.addresses_v4 == frozenset()
    (refused,) = result.rejected_sample
    assert "device C02ALICE" in refused.reason and "past max_stale" in refused.reason


def test_device_groups_are_checked_with_key_paths(tmp_path: Path) -> None:
    document = base_dict()
    document["clients"].append({"name": "vpn2", "type": "wireguard", "inventory": "itt"})
    document["inventories"] = [
        {"name": "it", "type": "file", "path": "/etc/repogate/devices.csv", "format": "csv"},
        {"name": "mdm", "type": "file", "format": "xml"},
    ]
    with pytest.raises(ConfigError) as error:
        parse_config(document)
    text = str(error.value)
    assert "clients[2].interface: is required" in text
    assert "clients[2].inventory: 'itt' is not a defined inventory (did you mean 'it'?)" in text
    assert "inventories[1].format: 'xml' is not one of: csv, json" in text
    assert 'inventories[1].path: is required with type = "file"' in text


def test_a_tunnel_group_is_bound_to_its_interface_and_shares_its_inventory(
    tmp_path: Path,
) -> None:
    config, _ = config_with(tmp_path, CSV.format(recent="2026-01-01T00:00:00Z"))
    assert config.group("ovpn").interfaces == ("tun0",)
    spec = next(s for s in specs(config) if s.key == "ovpn")
    assert spec.kind == "openvpn" and spec.interval == 2.0 and spec.max_stale is not None


def test_check_warns_about_randomised_macs_and_bad_rows(tmp_path: Path) -> None:
    import io

    from repogate.cli.main import main

    devices = tmp_path / "devices.csv"
    devices.write_text(
        "device,compliant,macs\nPHONE1,true,02:11:22:33:44:55\nLAPTOP2,maybe,00:11:22:33:44:66\n"
    )
    config = tmp_path / "repogate.toml"
    config.write_text(
        f"""
[agent]
state_dir = "{tmp_path / "state"}"
[destinations.bitbucket]
networks = ["104.192.136.0/21"]
ports = [22]
[[inventories]]
name = "it"
type = "file"
path = "{devices}"
format = "csv"
[[clients]]
name = "lan"
type = "neighbours"
interfaces = ["eth1"]
inventory = "it"
"""
    )
    out = io.StringIO()
    assert main(["check", "--config", str(config)], out=out, err=io.StringIO()) == 0
    text = out.getvalue()
    assert "device PHONE1 lists 02:11:22:33:44:55, a locally administered (randomised) MAC" in text
    assert "inventory it: row 3:" in text


CLIENT_HEADER = "HEADER,CLIENT_LIST,Common Name,Real Address,Virtual Address,Virtual IPv6 Address"


def status_written_at(epoch: int, address: str) -> OpenvpnStatus:
    """The server's status file (status-version 2) as of `epoch`, alice at `address`."""
    text = (
        f"TITLE,OpenVPN 2.6.14\nTIME,x,{epoch}\n{CLIENT_HEADER}\n"
        f"CLIENT_LIST,alice-laptop,192.0.2.2:1194,{address},\nEND\n"
    )
    return parse_status(text, where="status.log", interface="tun0")


def test_status_rows_written_before_the_tunnel_went_down_admit_no_one(tmp_path: Path) -> None:
    """A restarted server hands its pool out afresh: until it writes its first status, the
    old rows name holders of addresses someone else may have now."""
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config, _ = config_with(tmp_path, CSV.format(recent=recent))
    group = config.group("ovpn")
    assert isinstance(group, DeviceClients)
    lost = int(time.time())
    status = status_written_at(lost - 5, "10.8.0.2")
    inventory = InventoryReader(config.inventories["it"], max_stale=3600)
    source = DeviceSource(group, inventory, read_map=lambda _group, _now: status)
    assert source.fetch().entries.addresses_v4 == {"10.8.0.2"}  # before the loss: admitted
    source.tunnel_lost(float(lost))
    gone = source.fetch()
    assert gone.entries.addresses_v4 == frozenset() and gone.accepted == 0
    assert any(note.startswith("the tunnel went down") for note in gone.notes)
    status = status_written_at(lost + 1, "10.8.0.7")  # the new server's first status
    back = source.fetch()
    assert back.entries.addresses_v4 == {"10.8.0.7"}
    assert not any(note.startswith("the tunnel went down") for note in back.notes)


def test_a_map_without_a_write_time_is_not_held_to_the_tunnel(tmp_path: Path) -> None:
    """Leases and handshakes carry no TIME line: a link event alone changes nothing."""
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config, _ = config_with(tmp_path, CSV.format(recent=recent))
    source = device_source(config, Seen(ovpn("alice-laptop", "10.8.0.2")))
    source.tunnel_lost(time.time() + 60)
    result = source.fetch()
    assert result.entries.addresses_v4 == {"10.8.0.2"} and result.notes == ()


@pytest.mark.parametrize(
    ("own", "device_share", "file_share"),
    [({}, 1.0, 0.3), ({"max_shrink": "20%"}, 0.2, 0.3)],
    ids=["device-group-without", "device-group-with"],
)
def test_a_device_groups_shrink_is_held_only_when_it_sets_max_shrink(
    tmp_path: Path, own: dict[str, Any], device_share: float, file_share: float
) -> None:
    """A device that stops qualifying loses access at once; a file list keeps the agent's."""
    document = base_dict()
    document["agent"]["max_shrink"] = 0.3
    document["inventories"] = [
        {"name": "it", "type": "file", "path": str(tmp_path / "d.csv"), "format": "csv"}
    ]
    document["clients"] += [
        {"name": "wg", "type": "wireguard", "interface": "wg0", "inventory": "it", **own},
        {"name": "list", "type": "file", "path": str(tmp_path / "list.txt")},
    ]
    config = parse_config(document)
    assert config.max_shrink(config.group("wg")) == device_share
    assert config.max_shrink(config.group("list")) == file_share
