"""The join of sightings and inventory records: every sighting gets a verdict and a reason."""

from __future__ import annotations

from repogate.sources.devices import DeviceRecord, Sighting
from repogate.sources.devices.join import (
    ADMITTED,
    CONTESTED,
    NON_COMPLIANT,
    UNKNOWN,
    admitted_addresses,
    index,
    join,
)

ALICE = DeviceRecord("C02ALICE", True, owner="alice", openvpn=("alice-laptop",))
MALLORY = DeviceRecord("C02MALLORY", False, owner="mallory", openvpn=("mallory-laptop",))


def qualifies(record: DeviceRecord, now: float) -> tuple[bool, str]:
    return (True, "compliant") if record.compliant else (False, "non-compliant per inventory")


def seen(cn: str, address: str) -> Sighting:
    return Sighting("openvpn", cn, (address,), "connected", "tun0")


def test_each_sighting_is_judged_on_its_own_record() -> None:
    verdicts = join(
        [
            seen("alice-laptop", "10.8.0.2"),
            seen("mallory-laptop", "10.8.0.3"),
            seen("eve", "10.8.0.4"),
        ],
        index([ALICE, MALLORY]),
        qualifies,
        now=0.0,
    )
    assert [v.state for v in verdicts] == [ADMITTED, NON_COMPLIANT, UNKNOWN]
    assert verdicts[0].device == "C02ALICE"
    assert verdicts[1].reason == "non-compliant per inventory"
    assert "eve is in no inventory record" in verdicts[2].reason
    assert admitted_addresses(verdicts) == ["10.8.0.2"]


def test_a_reused_pool_address_follows_its_new_holder() -> None:
    # After a server restart the pool hands alice's old address to mallory.
    verdicts = join(
        [seen("mallory-laptop", "10.8.0.2"), seen("alice-laptop", "10.8.0.6")],
        index([ALICE, MALLORY]),
        qualifies,
        now=0.0,
    )
    assert admitted_addresses(verdicts) == ["10.8.0.6"]


def test_an_address_claimed_by_a_refused_device_is_refused_to_all() -> None:
    verdicts = join(
        [seen("alice-laptop", "10.8.0.2"), seen("mallory-laptop", "10.8.0.2")],
        index([ALICE, MALLORY]),
        qualifies,
        now=0.0,
    )
    assert [v.state for v in verdicts] == [CONTESTED, NON_COMPLIANT]
    assert admitted_addresses(verdicts) == []


def test_without_an_inventory_every_peer_is_admitted() -> None:
    verdicts = join([seen("anyone", "10.8.0.9")], None, qualifies, now=0.0)
    assert admitted_addresses(verdicts) == ["10.8.0.9"]
