"""Inventory parsing (CSV and JSON), MAC normalisation and the compliance verdict."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from repogate.errors import SourceError
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.inventory import is_randomised, parse_inventory, qualifies
from repogate.sources.devices.macs import InvalidMacError, normalise_mac

KEY = base64.b64encode(bytes(range(32))).decode()
DAY = 86400.0


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "text",
    [
        "AA-BB-CC-DD-EE-F0",
        "aabb.ccdd.eef0",
        "AA:BB:CC:DD:EE:F0",
        " aa:bb:cc:dd:ee:f0 ",
        "AABBCCDDEEF0",
    ],
)
def test_macs_in_the_usual_forms_are_normalised(text: str) -> None:
    assert normalise_mac(text) == "aa:bb:cc:dd:ee:f0"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aabbccddeef",  # bare hex (Intune's form) needs all twelve digits
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:f0:11",
        "aa-bb:cc-dd:ee-f0",  # mixed separators
        "a:b:c:d:e:f",
        "gg:bb:cc:dd:ee:f0",
        "aabb.ccdd.eef",
        "01:00:5e:00:00:01",  # multicast
        "ff:ff:ff:ff:ff:ff",  # broadcast
        "00:00:00:00:00:00",
    ],
)
def test_anything_else_is_not_a_mac(text: str) -> None:
    with pytest.raises(InvalidMacError):
        normalise_mac(text)


def test_locally_administered_macs_are_flagged_as_randomised() -> None:
    assert is_randomised("02:00:00:00:00:01")
    assert is_randomised("da:a1:19:00:00:01")
    assert not is_randomised("00:1b:63:00:00:01")


def test_a_csv_inventory_parses_every_column() -> None:
    text = (
        "Device , Compliant,owner,group,last_seen,expires,macs,wireguard,openvpn,model\n"
        f"SN1,yes,alice,dev,2025-03-01T10:00:00Z,2025-06-01,AA-BB-CC-DD-EE-01 aabb.ccdd.ee02,"
        f"{KEY},alice-laptop,ThinkPad\n"
        "SN2,FALSE,,,,,,,,\n"
    )
    parsed = parse_inventory(text.encode())
    assert parsed.rejected == ()
    assert parsed.records == (
        DeviceRecord(
            device="SN1",
            compliant=True,
            owner="alice",
            group="dev",
            last_seen=epoch("2025-03-01T10:00:00"),
            expires=epoch("2025-06-01T00:00:00"),  # naive: UTC
            macs=("aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"),
            wireguard=(KEY,),
            openvpn=("alice-laptop",),
        ),
        DeviceRecord(device="SN2", compliant=False),
    )


def test_timezones_are_honoured() -> None:
    text = "device,compliant,last_seen\nSN1,1,2025-03-01T12:00:00+02:00\n"
    (record,) = parse_inventory(text).records
    assert record.last_seen == epoch("2025-03-01T10:00:00")


def test_bad_csv_rows_are_rejected_with_their_row_and_the_rest_applies() -> None:
    rows = [
        "device,compliant,macs,wireguard,openvpn,last_seen",
        "ok1,true,,,,",
        ",true,,,,",  # row 3: no device
        "bad2,maybe,,,,",
        "bad3,true,zz:zz:zz:zz:zz:zz,,,",
        "bad4,true,,not-base64!,,",
        f"bad5,true,,{base64.b64encode(bytes(16)).decode()},,",
        "bad6,true,,,,yesterday",
        "bad7,true,,",  # torn row: too few cells
        "bad8,true,,,,,extra",
        "",  # a blank row is nothing
        "bad9,true,,,cn\x01,",
        "ok2,no,,,,",
    ]
    parsed = parse_inventory("\n".join(rows) + "\n")
    assert [r.device for r in parsed.records] == ["ok1", "ok2"]
    found = {r.where: (r.text, r.reason) for r in parsed.rejected}
    assert list(found) == [f"row {n}" for n in (3, 4, 5, 6, 7, 8, 9, 10, 12)]
    assert "device: empty" in found["row 3"][1]
    assert found["row 4"] == ("bad2", "compliant: 'maybe', expected true/false, yes/no or 1/0")
    assert "not a MAC address" in found["row 5"][1]
    assert "not base64" in found["row 6"][1]
    assert "16 bytes, a public key is 32" in found["row 7"][1]
    assert "not an ISO 8601" in found["row 8"][1]
    assert found["row 9"][1] == "4 cells where the header has 6"
    assert found["row 10"][1] == "7 cells where the header has 6"
    assert "control characters" in found["row 12"][1]


def test_a_missing_compliant_value_is_rejected_not_taken_as_false() -> None:
    parsed = parse_inventory("device,compliant\nSN1,\n")
    assert parsed.records == ()
    assert parsed.rejected[0].reason.startswith("compliant: missing")


def test_a_duplicated_device_is_rejected_on_every_row() -> None:
    parsed = parse_inventory("device,compliant\nSN1,yes\nSN2,yes\nSN1,no\n")
    assert [r.device for r in parsed.records] == ["SN2"]
    assert [(r.where, r.reason) for r in parsed.rejected] == [
        ("row 2", "device 'SN1' is also on row 4: none of its rows is used"),
        ("row 4", "device 'SN1' is also on row 2: none of its rows is used"),
    ]


def test_quoted_cells_spanning_lines_keep_row_numbers_right() -> None:
    text = 'device,compliant,owner\nSN1,yes,"two\nlines"\nSN2,perhaps,x\n'
    parsed = parse_inventory(text)
    assert parsed.records[0].owner == "two\nlines"
    assert parsed.rejected[0].where == "row 4"


def test_a_bom_from_excel_does_not_hide_the_device_column() -> None:
    parsed = parse_inventory("\ufeffdevice,compliant\nSN1,yes\n".encode())
    assert [r.device for r in parsed.records] == ["SN1"]


def test_a_json_inventory_takes_lists_or_space_separated_strings() -> None:
    document = [
        {"device": "SN1", "compliant": True, "macs": ["AA:BB:CC:DD:EE:01", "aabb.ccdd.ee01"]},
        {"Device": "SN2", "compliant": "No", "macs": "aa:bb:cc:dd:ee:02 aa:bb:cc:dd:ee:03"},
        {"device": "SN3", "compliant": 1, "openvpn": ["Alice Laptop"], "owner": None},
        {"device": "bad", "compliant": 2},
        {"device": "bad", "compliant": "true"},  # not a duplicate of a rejected row's name
        "not an object",
        {"device": 7, "compliant": True},
        {"device": "SN4", "compliant": True, "macs": [1, 2]},
        {"device": "SN5", "compliant": True, "last_seen": 1700000000},
    ]
    parsed = parse_inventory(json.dumps(document))
    assert [r.device for r in parsed.records] == ["SN1", "SN2", "SN3", "bad"]
    assert parsed.records[0].macs == ("aa:bb:cc:dd:ee:01",)  # the same MAC twice is one
    assert parsed.records[1].macs == ("aa:bb:cc:dd:ee:02", "aa:bb:cc:dd:ee:03")
    assert parsed.records[2].openvpn == ("Alice Laptop",)  # a list keeps spaces in a name
    assert [r.where for r in parsed.rejected] == ["$[3]", "$[5]", "$[6]", "$[7]", "$[8]"]
    assert parsed.rejected[1].reason == "not an object but str"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("10.0.0.1\n10.0.0.2\n", "no 'device' and 'compliant' column"),
        ("device,owner\nSN1,alice\n", "no 'compliant' column"),
        ("device,compliant,device\n", "names column 'device' twice"),
        ('{"devices": []}', "must be a list of objects"),
        ("[1, 2", "neither CSV nor valid JSON"),
        ('[{"name": "SN1"}]', "no object in the JSON inventory has both"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
        (b"device,compliant\x00\n", "binary"),
    ],
)
def test_a_file_that_is_no_inventory_raises(data: str | bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_inventory(data)


def test_an_empty_json_list_is_an_empty_inventory() -> None:
    assert parse_inventory("[]").records == ()


def test_qualifies_explains_itself() -> None:
    now = epoch("2025-03-10T12:00:00")
    good = DeviceRecord("SN1", True, last_seen=now - 3600, expires=epoch("2025-04-01T00:00:00"))
    assert qualifies(good, now=now, max_age=7 * DAY) == (
        True,
        "compliant per inventory, last seen 60 min ago, until 2025-04-01 00:00:00 UTC",
    )
    assert qualifies(DeviceRecord("SN1", True), now=now, max_age=None) == (
        True,
        "compliant per inventory",
    )
    assert qualifies(DeviceRecord("SN1", False), now=now, max_age=None) == (
        False,
        "non-compliant per inventory",
    )
    expired = DeviceRecord("SN1", True, expires=epoch("2025-03-01T08:30:00"))
    assert qualifies(expired, now=now, max_age=None) == (
        False,
        "record expired at 2025-03-01 08:30:00 UTC",
    )
    old = DeviceRecord("SN1", True, last_seen=now - 9 * DAY - 60)
    assert qualifies(old, now=now, max_age=7 * DAY) == (
        False,
        "last seen 9 days ago, older than max_age 7d",
    )
    assert qualifies(old, now=now, max_age=None)[0]
    unseen = DeviceRecord("SN1", True)
    assert qualifies(unseen, now=now, max_age=36 * 3600) == (
        False,
        "no last_seen in the inventory, and max_age 36h needs one",
    )


def test_expiry_is_exclusive_and_max_age_inclusive() -> None:
    now = 1_000_000.0
    assert not qualifies(DeviceRecord("SN1", True, expires=now), now=now, max_age=None)[0]
    assert qualifies(DeviceRecord("SN1", True, last_seen=now - 90), now=now, max_age=90)[0]
