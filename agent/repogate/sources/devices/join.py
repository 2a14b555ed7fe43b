"""The join: who is present (sightings) against who is compliant (records).

Every sighting gets a verdict with a reason, admitted or not, so `explain` and
`repogate devices` can always say why. An address is admitted only for the
device that holds it now and only while that device qualifies: when a VPN pool
hands an approved device's old address to another device, the new holder is
judged on its own record. When two identities claim one address at the same
moment (a status file not yet rewritten), the address is refused unless every
claimant qualifies: never admit on a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from repogate.sources.devices import DeviceRecord, IdentityKind, Sighting

# (record, now) -> (qualifies, reason in an admin's words)
Qualifies = Callable[[DeviceRecord, float], tuple[bool, str]]

ADMITTED = "admitted"
NON_COMPLIANT = "non-compliant"
UNKNOWN = "unknown"
CONTESTED = "contested"


@dataclass(frozen=True)
class Verdict:
    """One sighting, judged."""

    sighting: Sighting
    record: DeviceRecord | None  # None: seen on the network but not in the inventory
    state: str  # ADMITTED, NON_COMPLIANT, UNKNOWN or CONTESTED
    reason: str

    @property
    def admitted(self) -> bool:
        return self.state == ADMITTED

    @property
    def device(self) -> str:
        return self.record.device if self.record is not None else ""


def index(records: Iterable[DeviceRecord]) -> dict[tuple[IdentityKind, str], DeviceRecord]:
    """Records by (identity kind, identity); an identity listed twice keeps the first."""
    found: dict[tuple[IdentityKind, str], DeviceRecord] = {}
    for record in records:
        identities: tuple[tuple[IdentityKind, tuple[str, ...]], ...] = (
            ("mac", record.macs),
            ("wireguard", record.wireguard),
            ("openvpn", record.openvpn),
        )
        for kind, values in identities:
            for identity in values:
                found.setdefault((kind, identity), record)
    return found


def join(
    sightings: Iterable[Sighting],
    records: dict[tuple[IdentityKind, str], DeviceRecord] | None,
    qualifies: Qualifies,
    now: float,
) -> tuple[Verdict, ...]:
    """Judge every sighting; `records` None: no inventory, every sighting admitted."""
    verdicts: list[Verdict] = []
    for sighting in sightings:
        if records is None:
            verdicts.append(Verdict(sighting, None, ADMITTED, "no inventory: every peer admitted"))
            continue
        record = records.get((sighting.kind, sighting.identity))
        if record is None:
            reason = f"{sighting.kind} {sighting.identity} is in no inventory record"
            verdicts.append(Verdict(sighting, None, UNKNOWN, reason))
            continue
        ok, reason = qualifies(record, now)
        verdicts.append(Verdict(sighting, record, ADMITTED if ok else NON_COMPLIANT, reason))
    return _refuse_contested(verdicts)


def _refuse_contested(verdicts: list[Verdict]) -> tuple[Verdict, ...]:
    """An address claimed by a device that does not qualify is refused to all claimants."""
    refused_addresses = {
        address
        for verdict in verdicts
        if not verdict.admitted
        for address in verdict.sighting.addresses
    }
    judged: list[Verdict] = []
    for verdict in verdicts:
        shared = refused_addresses & set(verdict.sighting.addresses)
        if verdict.admitted and shared:
            reason = (
                f"{', '.join(sorted(shared))} is also claimed by a device that does not "
                "qualify: refused until only one holds it"
            )
            judged.append(Verdict(verdict.sighting, verdict.record, CONTESTED, reason))
        else:
            judged.append(verdict)
    return tuple(judged)


def admitted_addresses(verdicts: Iterable[Verdict]) -> list[str]:
    return [address for v in verdicts if v.admitted for address in v.sighting.addresses]
