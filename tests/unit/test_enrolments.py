"""Enrolment maps join MDM records (serials) to VPN identities (keys, certificate names)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from repogate.config.schema import Inventory
from repogate.errors import SourceError
from repogate.sources.devices.reader import InventoryReader

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()
INVENTORY = "device,compliant,owner\nC02ANNA,true,anna\nC02BOB,false,bob\n"


def reader(tmp_path: Path, enrolments: str) -> tuple[InventoryReader, Path]:
    (tmp_path / "devices.csv").write_text(INVENTORY)
    path = tmp_path / "enrolments.csv"
    path.write_text(enrolments)
    inventory = Inventory(
        "it", "csv", path=tmp_path / "devices.csv", enrolments=(path,), interval=10
    )
    return InventoryReader(inventory, max_stale=3600), path


def test_enrolled_identities_join_the_device_they_name(tmp_path: Path) -> None:
    inventory, _ = reader(
        tmp_path, f"device,wireguard,openvpn\nc02anna,{KEY_A},anna-laptop\nC02BOB,{KEY_B},\n"
    )
    records = inventory.current(now=1000.0)
    anna = records.by_identity[("wireguard", KEY_A)]
    assert anna.device == "C02ANNA" and anna.compliant  # serials compare in any case
    assert records.by_identity[("openvpn", "anna-laptop")] is anna
    assert not records.by_identity[("wireguard", KEY_B)].compliant


def test_an_enrolled_device_the_inventory_lacks_is_refused_with_that_reason(
    tmp_path: Path,
) -> None:
    inventory, _ = reader(tmp_path, f"device,wireguard\nC02GONE,{KEY_A}\n")
    record = inventory.current(now=1000.0).by_identity[("wireguard", KEY_A)]
    assert not record.compliant
    assert record.refusal == (
        "enrolled (enrolments.csv row 2), but inventory it has no such device"
    )


def test_an_identity_enrolled_for_two_devices_is_used_for_neither(tmp_path: Path) -> None:
    inventory, _ = reader(tmp_path, f"device,wireguard\nC02ANNA,{KEY_A}\nC02BOB,{KEY_A}\n")
    records = inventory.current(now=1000.0)
    assert ("wireguard", KEY_A) not in records.by_identity
    reasons = [r.reason for r in records.rejected]
    assert (
        reasons
        == [
            f"wireguard {KEY_A} is enrolled for several devices "
            "(enrolments.csv row 2, enrolments.csv row 3)"
        ]
        * 2
    )


def test_bad_rows_are_rejected_and_the_rest_applies(tmp_path: Path) -> None:
    inventory, _ = reader(tmp_path, f"device,wireguard\nC02ANNA,{KEY_A}\nC02BOB,not-a-key\n")
    records = inventory.current(now=1000.0)
    assert ("wireguard", KEY_A) in records.by_identity
    assert [r.where for r in records.rejected] == ["enrolments.csv row 3"]


def test_a_changed_enrolment_file_is_joined_again(tmp_path: Path) -> None:
    inventory, path = reader(tmp_path, f"device,wireguard\nC02ANNA,{KEY_A}\n")
    assert ("wireguard", KEY_A) in inventory.current(now=1000.0).by_identity
    path.write_text(f"device,wireguard\nC02ANNA,{KEY_B}\n")
    os.utime(path, ns=(0, 10**18))  # a different mtime, whatever the clock's resolution
    records = inventory.current(now=1001.0)
    assert ("wireguard", KEY_A) not in records.by_identity
    assert ("wireguard", KEY_B) in records.by_identity


def test_an_unreadable_enrolment_file_keeps_the_last_join_until_max_stale(
    tmp_path: Path,
) -> None:
    inventory, path = reader(tmp_path, f"device,wireguard\nC02ANNA,{KEY_A}\n")
    inventory.current(now=1000.0)
    path.write_text("serial;key\n")
    os.utime(path, ns=(0, 10**18))
    kept = inventory.current(now=1001.0)
    assert ("wireguard", KEY_A) in kept.by_identity
    assert inventory.failure is not None and "must name 'device'" in inventory.failure
    with pytest.raises(SourceError, match="past max_stale"):
        inventory.current(now=1000.0 + 3600)
