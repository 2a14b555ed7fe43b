"""DHCP leases as an address map: which MAC holds which IPv4 address, until when.

Two servers' files are read: dnsmasq's leases file and Kea's memfile CSV for DHCPv4.
Both are rewritten by their server while we may be reading (dnsmasq truncates and
rewrites in place; Kea appends and its LFC replaces the file), so a line may be torn,
and a file may come from a newer server with columns we do not know. A line that
cannot be read is rejected with its line number and reason, never fatal; a file that
is not a lease file of the kind asked for raises `SourceError`, and so does a dnsmasq
file that stays cut short mid-line (read again first: see `_read_dnsmasq`).

Only leases that hold at `now` become sightings; well-formed leases that admit
nobody (expired, released, declined, DHCPv6) are returned as `ignored`, so
`explain` can say why a device is not seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Literal

from repogate.addresses import Rejected, canonical_address, element_order
from repogate.errors import SourceError
from repogate.sources.devices import Sighting
from repogate.sources.devices.macs import InvalidMacError, normalise_mac
from repogate.sources.devices.rewrites import (  # noqa: F401 - the policy, named here too
    CUT_SHORT,
    READ_ATTEMPTS,
    REREAD_PAUSE,
    read_whole,
)

KEA_INFINITE = 0xFFFFFFFF  # Kea's valid_lifetime for a lease that never expires
_KEA_REQUIRED = ("address", "hwaddr", "valid_lifetime", "expire")
_KEA_STATES = {1: "declined", 2: "expired-reclaimed", 3: "released"}
_HWTYPE = re.compile(r"\d+-")  # dnsmasq's `<type>-<address>` for non-Ethernet hardware


@dataclass(frozen=True)
class ParsedLeases:
    sightings: tuple[Sighting, ...]  # one per MAC, with every address it holds now
    rejected: tuple[Rejected, ...]  # lines that could not be read: a torn or foreign line
    ignored: tuple[Rejected, ...]  # readable leases that hold no address now, and why


@dataclass(frozen=True)
class _Lease:
    mac: str
    address: str
    expiry: float | None  # None: never expires


class _LineError(ValueError):
    """A lease line cannot be read; the message says which field and why."""


def read_leases(
    path: Path,
    *,
    lease_format: Literal["dnsmasq", "kea"],
    now: float,
    tz: tzinfo | None = None,
) -> ParsedLeases:
    """Read and parse a lease file; SourceError when it cannot be read.

    An unreadable file must keep what is enforced (the group's last known good), not
    look like "no leases", so it raises rather than returning nothing.
    """
    if lease_format == "kea":
        return parse_kea4(_read(path), now=now, tz=tz)
    return parse_dnsmasq(_read_dnsmasq(path), now=now, tz=tz)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_dnsmasq(path: Path) -> bytes:
    """The file as dnsmasq finished writing it.

    dnsmasq rewrites it in place (ftruncate, then its buffer written out) and ends every
    line with a newline, so a read that is empty or ends mid-line may have met a rewrite
    (see `rewrites`; found by tests/e2e/test_faults_files.py). Still empty after the
    last read is a file with no leases.
    """
    data = read_whole(lambda: _read(path), lambda data: data.endswith(b"\n"))
    if data and not data.endswith(b"\n"):
        raise SourceError(f"{path} ends mid-line {CUT_SHORT}")
    return data


def parse_dnsmasq(data: str | bytes, *, now: float, tz: tzinfo | None = None) -> ParsedLeases:
    """dnsmasq's leases file: `<expiry> <mac> <ip> <hostname> <client-id>` per line.

    Expiry 0 is an infinite lease. After a `duid <server duid>` line come DHCPv6
    leases (`<expiry> <iaid> <ipv6> <hostname> <client duid>`): they name a DUID, not
    a MAC, so they are ignored with that reason; the kernel's neighbour table maps
    IPv6 addresses to MACs instead. `tz` is the zone of the times in `detail`
    (default: the host's, as journald shows).
    """
    leases: list[_Lease] = []
    rejected: list[Rejected] = []
    ignored: list[Rejected] = []
    ipv6 = False
    for number, line in _lines(data):
        where = f"line {number}"
        if line.startswith("duid"):
            ipv6 = True
            continue
        if ipv6:
            reason = "DHCPv6 lease: it names a DUID, not a MAC (the neighbour table maps IPv6)"
            ignored.append(Rejected(where, line, reason))
            continue
        fields = line.split()
        try:
            if len(fields) != 5:
                raise _LineError(f"{len(fields)} fields, expected 5 (torn or foreign line)")
            expiry_text, mac_text, address_text = fields[:3]
            if _HWTYPE.match(mac_text):
                hwtype = mac_text.partition("-")[0]
                ignored.append(Rejected(where, line, f"hardware type {hwtype}, not Ethernet"))
                continue
            lease = _Lease(
                _mac(mac_text), _ipv4(address_text), _expiry(_int(expiry_text, "expiry"))
            )
        except _LineError as exc:
            rejected.append(Rejected(where, line, str(exc)))
            continue
        if lease.expiry is not None and lease.expiry <= now:
            ignored.append(Rejected(where, line, f"lease expired at {_clock(lease.expiry, tz)}"))
            continue
        leases.append(lease)
    return ParsedLeases(_sightings(leases, now, tz), tuple(rejected), tuple(ignored))


def parse_kea4(data: str | bytes, *, now: float, tz: tzinfo | None = None) -> ParsedLeases:
    """Kea's memfile CSV for DHCPv4 (`kea-leases4.csv`), columns found by header name.

    Kea appends a line whenever a lease changes, so the last line for an address wins,
    including one that cannot be read: a torn rewrite revokes the address rather than
    letting an older line admit a device that may have released it. Only state 0
    (default) holds an address; declined (1), expired-reclaimed (2) and released (3)
    do not. Columns added by later Kea versions are ignored.
    """
    header: list[str] | None = None
    last: dict[str, tuple[str, str, _Lease | str | None]] = {}  # address -> where, line, lease
    rejected: list[Rejected] = []
    for number, line in _lines(data):
        where = f"line {number}"
        if line.startswith("address,"):
            header = _kea_header(line)
            continue
        if header is None:
            raise SourceError("not a Kea lease file: no `address,hwaddr,...` header line")
        fields = line.split(",")  # Kea escapes commas in values as &#x2c
        address = fields[0] if canonical_address(fields[0]) else None
        try:
            if len(fields) != len(header):
                found = f"{len(fields)} fields where the header has {len(header)}"
                raise _LineError(f"{found} (torn line or another Kea version)")
            lease = _kea_lease(dict(zip(header, fields, strict=True)))
        except _LineError as exc:
            rejected.append(Rejected(where, line, str(exc)))
            if address is not None:
                last[address] = (where, line, None)
            continue
        last[fields[0]] = (where, line, lease)
    leases: list[_Lease] = []
    ignored: list[Rejected] = []
    for where, line, final in last.values():
        if isinstance(final, str):
            ignored.append(Rejected(where, line, final))
        elif final is None:
            continue  # rejected above, with its reason
        elif final.expiry is not None and final.expiry <= now:
            ignored.append(Rejected(where, line, f"lease expired at {_clock(final.expiry, tz)}"))
        else:
            leases.append(final)
    return ParsedLeases(_sightings(leases, now, tz), tuple(rejected), tuple(ignored))


def _kea_header(line: str) -> list[str]:
    header = [name.strip() for name in line.split(",")]
    if "duid" in header:
        raise SourceError("this is Kea's DHCPv6 lease file; only DHCPv4 leases name MACs")
    missing = [name for name in _KEA_REQUIRED if name not in header]
    if missing:
        raise SourceError(f"not a Kea DHCPv4 lease file: the header has no {', '.join(missing)}")
    return header


def _kea_lease(row: dict[str, str]) -> _Lease | str:
    """The lease a line describes, or why it holds no address (a str)."""
    address = _ipv4(row["address"])
    lifetime = _int(row["valid_lifetime"], "valid_lifetime")
    expire = _int(row["expire"], "expire")
    state = _int(row.get("state") or "0", "state")  # before Kea 1.1 there was no state
    if state != 0:
        return f"lease {_KEA_STATES.get(state, f'in state {state}')}"
    if lifetime == 0:
        return "lease deleted"  # memfile records a deletion as a lease with lifetime 0
    if not row["hwaddr"]:
        return "lease without a hardware address (client id only)"
    return _Lease(_mac(row["hwaddr"]), address, None if lifetime == KEA_INFINITE else expire)


def _lines(data: str | bytes) -> Iterator[tuple[int, str]]:
    # A torn multi-byte character spoils one line, not the file.
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if "\x00" in text:
        raise SourceError("the lease file is binary, not text")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _int(text: str, name: str) -> int:
    if not text.isdigit():  # isdigit: no sign, no spaces, no underscores
        raise _LineError(f"{name}: {text!r} is not a whole number")
    return int(text)


def _expiry(value: int) -> float | None:
    return None if value == 0 else float(value)


def _mac(text: str) -> str:
    try:
        return normalise_mac(text)
    except InvalidMacError as exc:
        raise _LineError(f"hardware address: {exc}") from exc


def _ipv4(text: str) -> str:
    found = canonical_address(text)
    if found is None or found[0] != 4:
        raise _LineError(f"address: {text!r} is not an IPv4 address")
    return found[1]


def _sightings(leases: Iterable[_Lease], now: float, tz: tzinfo | None) -> tuple[Sighting, ...]:
    """One sighting per MAC: a device with leases on two subnets holds both addresses."""
    by_mac: dict[str, list[_Lease]] = {}
    for lease in leases:
        by_mac.setdefault(lease.mac, []).append(lease)
    result: list[Sighting] = []
    for mac, held in sorted(by_mac.items()):
        addresses = sorted({lease.address for lease in held}, key=element_order)
        expiries = [lease.expiry for lease in held]
        if None in expiries:
            detail = "lease never expires"
        else:
            detail = f"lease until {_clock(max(e for e in expiries if e is not None), tz, now)}"
        result.append(Sighting("mac", mac, tuple(addresses), detail))
    return tuple(result)


def _clock(epoch: float, tz: tzinfo | None, now: float | None = None) -> str:
    """HH:MM:SS, with the date when it is not today's: a time alone would mislead."""
    moment = datetime.fromtimestamp(epoch, tz)
    if now is not None and moment.date() == datetime.fromtimestamp(now, tz).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")
