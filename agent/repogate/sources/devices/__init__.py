"""Devices: inventories say who is compliant, address maps say who is present.

A device is admitted while both hold: its inventory record is compliant and
fresh, and the host sees one of its identities (a MAC, a WireGuard key, an
OpenVPN certificate name) holding an address right now. The inventories and
the maps are parsed here into the two shapes below; the join lives beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IdentityKind = Literal["mac", "wireguard", "openvpn"]


@dataclass(frozen=True)
class DeviceRecord:
    """One device as an inventory (a CSV, an MDM) describes it."""

    device: str  # the identity shown to people (a serial number); unique per inventory
    compliant: bool
    owner: str = ""
    name: str = ""  # what the MDM calls it ("Anna's MacBook Pro"), for people
    # Why the inventory says not compliant, in its own terms ("Intune complianceState =
    # noncompliant"); empty: the generic wording.
    refusal: str = ""
    seen_as: str = "last seen"  # how the inventory words last_seen ("last Intune sync")
    group: str = ""
    last_seen: float | None = None  # epoch seconds; older than max_age: stale record
    expires: float | None = None  # epoch seconds; past it: not compliant
    macs: tuple[str, ...] = ()  # normalised: lower case, colon separated
    wireguard: tuple[str, ...] = ()  # base64 public keys
    openvpn: tuple[str, ...] = ()  # certificate common names


@dataclass(frozen=True)
class Sighting:
    """An identity the host sees holding addresses right now (an address map's row)."""

    kind: IdentityKind
    identity: str  # normalised MAC, base64 key or common name
    addresses: tuple[str, ...]  # canonical addresses or networks (repogate.addresses)
    detail: str = ""  # for people: "lease until 12:30", "handshake 12 s ago"
    interface: str | None = None  # where the packets arrive, when the map knows
