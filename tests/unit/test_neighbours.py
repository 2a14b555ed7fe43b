"""The neighbour table's pure part: message -> entry, entries -> sightings and events."""

from __future__ import annotations

from typing import Any

import pytest

from repogate.sources.devices import Sighting
from repogate.sources.devices.neighbours import (
    Neighbour,
    NeighbourEvent,
    NeighbourMessage,
    NeighbourTable,
    message_fields,
    read_neighbours,
    sightings,
    translate,
)

NAMES = {1: "lo", 2: "lan0", 3: "wan0"}
LAN = frozenset({"lan0"})
MAC = "aa:bb:cc:dd:ee:01"


def message(
    state: int = 0x02,
    address: str | None = "10.0.0.5",
    lladdr: str | None = "AA:BB:CC:DD:EE:01",
    *,
    event: str = "RTM_NEWNEIGH",
    ifindex: int = 2,
    confirmed: float | None = 1.5,
) -> NeighbourMessage:
    return NeighbourMessage(event, ifindex, state, address, lladdr, confirmed)


@pytest.mark.parametrize(
    ("state", "name"), [(0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"), (0x10, "PROBE")]
)
def test_present_states_map_the_address_to_the_mac(state: int, name: str) -> None:
    assert translate(message(state), NAMES, LAN) == (
        ("lan0", "10.0.0.5"),
        Neighbour("lan0", "10.0.0.5", MAC, name, 1.5),
    )


@pytest.mark.parametrize("state", [0x00, 0x01, 0x20, 0x40, 0x80])
def test_incomplete_failed_noarp_and_permanent_entries_hold_nobody(state: int) -> None:
    assert translate(message(state), NAMES, LAN) == (("lan0", "10.0.0.5"), None)


@pytest.mark.parametrize(
    "changed",
    [
        {"event": "RTM_DELNEIGH"},
        {"lladdr": None},
        {"lladdr": "ff:ff:ff:ff:ff:ff"},
        {"lladdr": "00:11"},  # not Ethernet
    ],
)
def test_a_deleted_entry_or_an_unusable_mac_holds_nobody(changed: dict[str, Any]) -> None:
    assert translate(message(**changed), NAMES, LAN) == (("lan0", "10.0.0.5"), None)


@pytest.mark.parametrize(
    "changed",
    [
        {"ifindex": 3},  # another interface
        {"ifindex": 99},  # unknown index
        {"address": None},
        {"address": "fe80::1"},
        {"address": "169.254.3.4"},
        {"address": "not-an-address"},
    ],
)
def test_messages_outside_the_map_are_not_about_it(changed: dict[str, Any]) -> None:
    assert translate(message(**changed), NAMES, LAN) is None


def test_ipv6_addresses_are_canonical() -> None:
    found = translate(message(address="2001:DB8:0:0::5"), NAMES, LAN)
    assert found is not None
    assert found[0] == ("lan0", "2001:db8::5")


def test_sightings_group_addresses_by_mac_and_interface() -> None:
    entries = [
        Neighbour("lan0", "2001:db8::5", MAC, "STALE", 40.0),
        Neighbour("lan0", "10.0.0.5", MAC, "REACHABLE", 2.2),
        Neighbour("lan1", "10.1.0.5", MAC, "STALE", None),
        Neighbour("lan0", "10.0.0.6", "aa:bb:cc:dd:ee:02", "DELAY", 7.0),
    ]
    assert sightings(entries) == (
        Sighting(
            "mac",
            MAC,
            ("10.0.0.5", "2001:db8::5"),
            "neighbour REACHABLE, confirmed 2 s ago",
            "lan0",
        ),
        Sighting("mac", MAC, ("10.1.0.5",), "neighbour STALE", "lan1"),
        Sighting(
            "mac", "aa:bb:cc:dd:ee:02", ("10.0.0.6",), "neighbour DELAY, confirmed 7 s ago", "lan0"
        ),
    )


def test_the_table_reports_changes_not_state_churn() -> None:
    table = NeighbourTable()
    key = ("lan0", "10.0.0.5")
    first = Neighbour("lan0", "10.0.0.5", MAC, "REACHABLE")
    assert table.apply(key, first) == [NeighbourEvent("present", "lan0", "10.0.0.5", MAC)]
    assert table.apply(key, Neighbour("lan0", "10.0.0.5", MAC, "STALE")) == []
    other = "aa:bb:cc:dd:ee:02"
    assert table.apply(key, Neighbour("lan0", "10.0.0.5", other, "REACHABLE")) == [
        NeighbourEvent("gone", "lan0", "10.0.0.5", MAC),
        NeighbourEvent("present", "lan0", "10.0.0.5", other),
    ]
    assert table.apply(key, None) == [NeighbourEvent("gone", "lan0", "10.0.0.5", other)]
    assert table.apply(key, None) == []
    assert table.neighbours() == []


def test_a_full_dump_reports_the_difference_and_a_removed_link_drops_its_entries() -> None:
    table = NeighbourTable()
    table.apply(("lan0", "10.0.0.5"), Neighbour("lan0", "10.0.0.5", MAC, "STALE"))
    table.apply(("lan0", "10.0.0.6"), Neighbour("lan0", "10.0.0.6", "aa:bb:cc:dd:ee:02", "STALE"))
    events = table.replace(
        [
            Neighbour("lan0", "10.0.0.5", MAC, "REACHABLE"),
            Neighbour("lan1", "10.1.0.7", "aa:bb:cc:dd:ee:03", "REACHABLE"),
        ]
    )
    assert events == [
        NeighbourEvent("gone", "lan0", "10.0.0.6", "aa:bb:cc:dd:ee:02"),
        NeighbourEvent("present", "lan1", "10.1.0.7", "aa:bb:cc:dd:ee:03"),
    ]
    assert table.drop_interface("lan1") == [
        NeighbourEvent("gone", "lan1", "10.1.0.7", "aa:bb:cc:dd:ee:03")
    ]
    assert [n.address for n in table.neighbours()] == ["10.0.0.5"]


class FakeMessage:
    """What pyroute2's messages offer: item access, .get and .get_attr."""

    def __init__(self, fields: dict[str, Any], attrs: dict[str, Any]) -> None:
        self.fields = fields
        self.attrs = attrs

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str) -> Any:
        return self.fields.get(key)

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def neigh(ifindex: int, state: int, dst: str, lladdr: str | None) -> FakeMessage:
    fields = {"event": "RTM_NEWNEIGH", "ifindex": ifindex, "state": state}
    cacheinfo = {"ndm_confirmed": 250, "ndm_used": 0, "ndm_updated": 0, "ndm_refcnt": 1}
    return FakeMessage(fields, {"NDA_DST": dst, "NDA_LLADDR": lladdr, "NDA_CACHEINFO": cacheinfo})


def test_message_fields_reads_a_pyroute2_message() -> None:
    assert message_fields(neigh(2, 0x04, "10.0.0.5", MAC)) == NeighbourMessage(
        "RTM_NEWNEIGH", 2, 0x04, "10.0.0.5", MAC, 2.5
    )


class FakeIPRoute:
    def __init__(self, neighbours: list[FakeMessage]) -> None:
        self.neighbours = neighbours

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_links(self) -> list[FakeMessage]:
        return [FakeMessage({"index": i}, {"IFLA_IFNAME": n}) for i, n in NAMES.items()]

    def get_neighbours(self) -> list[FakeMessage]:
        return self.neighbours


def test_read_neighbours_keeps_present_entries_on_the_named_interfaces() -> None:
    table = [
        neigh(2, 0x02, "10.0.0.5", MAC),
        neigh(2, 0x01, "10.0.0.6", None),  # INCOMPLETE
        neigh(2, 0x40, "224.0.0.1", "01:00:5e:00:00:01"),  # NOARP multicast
        neigh(3, 0x02, "192.0.2.1", "aa:bb:cc:dd:ee:99"),  # the uplink: not watched
        neigh(2, 0x04, "2001:db8::5", MAC),
    ]
    found = read_neighbours(["lan0"], now=0.0, iproute=lambda: FakeIPRoute(table))
    assert found.sightings == (
        Sighting(
            "mac",
            MAC,
            ("10.0.0.5", "2001:db8::5"),
            "neighbour REACHABLE, confirmed 2 s ago",
            "lan0",
        ),
    )
    assert found.rejected == ()
