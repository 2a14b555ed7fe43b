"""Parse and normalise client and destination entries.

Single addresses are the bulk of large lists, so they take a fast path through
`socket.inet_pton`/`inet_ntop` (C code, ~10x faster than `ipaddress`), which also
gives the exact text form that nft prints, so kernel and desired elements compare
as plain strings. Networks go through `ipaddress` so overlaps and adjacency can be
collapsed: nft rejects overlapping intervals in a set.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Family = Literal[4, 6]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidEntryError(ValueError):
    """An entry is not an IP address or network; the message is written for the admin."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One normalised entry: `text` is `a.b.c.d`, `a.b.c.d/len` or the IPv6 equivalents."""

    family: Family
    text: str
    is_network: bool
    prefixlen: int

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.text if self.is_network else f"{self.text}/{self.maxlen}")

    @property
    def maxlen(self) -> int:
        return 32 if self.family == 4 else 128


def canonical_address(text: str) -> tuple[Family, str] | None:
    """Return the family and nft's text form of a single address, or None if it is not one."""
    try:
        return 4, socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except OSError:
        pass
    try:
        return 6, socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        return None


def parse_entry(raw: object) -> Entry:
    """Parse one address or CIDR. A /32 or /128 becomes a single address."""
    if not isinstance(raw, str):
        raise InvalidEntryError(f"{raw!r} is not a string")
    text = raw.strip()
    if "/" not in text:
        found = canonical_address(text)
        if found is None:
            raise InvalidEntryError(f"{raw!r} is not an IP address or network")
        family, canonical = found
        return Entry(family, canonical, False, 32 if family == 4 else 128)
    address_part, _, length_part = text.partition("/")
    if canonical_address(address_part) is None or not length_part.isdigit():
        raise InvalidEntryError(f"{raw!r} is not an IP address or network")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            suggested = ipaddress.ip_network(text, strict=False)
            raise InvalidEntryError(
                f"{raw!r} has host bits set (did you mean '{suggested}'?)"
            ) from exc
        raise InvalidEntryError(f"{raw!r} is not an IP address or network") from exc
    return entry_from_network(network)


def entry_from_network(network: IPNetwork) -> Entry:
    family: Family = 4 if network.version == 4 else 6
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    address = socket.inet_ntop(af, network.network_address.packed)
    if network.prefixlen == network.max_prefixlen:
        return Entry(family, address, False, network.prefixlen)
    return Entry(family, f"{address}/{network.prefixlen}", True, network.prefixlen)


@dataclass(frozen=True)
class NormalisedEntries:
    """Entries split the way the kernel sets are laid out: per family, hash or interval."""

    addresses_v4: frozenset[str]
    addresses_v6: frozenset[str]
    networks_v4: frozenset[str]
    networks_v6: frozenset[str]

    def __len__(self) -> int:
        return (
            len(self.addresses_v4)
            + len(self.addresses_v6)
            + len(self.networks_v4)
            + len(self.networks_v6)
        )


def normalise(entries: Iterable[Entry]) -> NormalisedEntries:
    """Split entries into the four set kinds, collapsing overlapping and adjacent networks."""
    addresses: dict[Family, set[str]] = {4: set(), 6: set()}
    networks: dict[Family, list[IPNetwork]] = {4: [], 6: []}
    for entry in entries:
        if entry.is_network:
            networks[entry.family].append(entry.network)
        else:
            addresses[entry.family].add(entry.text)
    return NormalisedEntries(
        addresses_v4=frozenset(addresses[4]),
        addresses_v6=frozenset(addresses[6]),
        networks_v4=frozenset(_collapse(networks[4])),
        networks_v6=frozenset(_collapse(networks[6])),
    )


def _collapse(networks: list[IPNetwork]) -> list[str]:
    if not networks:
        return []
    # collapse_addresses merges overlaps and adjacent siblings; it wants one family.
    collapsed = ipaddress.collapse_addresses(networks)  # type: ignore[type-var]
    return [entry_from_network(network).text for network in collapsed]


def contains(entry_text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a normalised entry (address or network) covers `address`."""
    if "/" in entry_text:
        return address in ipaddress.ip_network(entry_text)
    return ipaddress.ip_address(entry_text) == address


@dataclass(frozen=True)
class Rejected:
    """An entry a source delivered that could not be used, located for the admin."""

    where: str
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class ParsedList:
    entries: NormalisedEntries
    accepted: int
    rejected_count: int
    rejected_sample: tuple[Rejected, ...]


def parse_many(
    items: Sequence[object],
    locate: Callable[[int], str],
    min_prefix: Mapping[int, int] | None = None,
    sample: int = 10,
    *,
    skip_empty: bool = False,
) -> ParsedList:
    """Parse a source's entries; bad ones are rejected (located by `locate(index)`), not fatal.

    Large lists are mostly IPv4 addresses, so each chunk is first validated in one
    C-level pass (`inet_pton` accepts only canonical dotted quads, so the text needs
    no rewriting); only chunks holding anything else take the per-entry path. This
    keeps a 100k-entry cold load close to raw `nft -f` speed.
    """
    parser = _BulkParser(locate, min_prefix, sample, skip_empty)
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        try:
            deque(map(_pton4, chunk), maxlen=0)
        except (OSError, TypeError):
            parser.slow(chunk, start)
        else:
            parser.addresses[4].update(chunk)  # type: ignore[arg-type]
            parser.accepted += len(chunk)
    return parser.result()


_CHUNK = 512
_pton4 = functools.partial(socket.inet_pton, socket.AF_INET)


@dataclass
class _BulkParser:
    locate: Callable[[int], str]
    min_prefix: Mapping[int, int] | None
    sample: int
    skip_empty: bool
    addresses: dict[Family, set[str]] = field(default_factory=lambda: {4: set(), 6: set()})
    networks: list[Entry] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rejected_count: int = 0
    accepted: int = 0

    def slow(self, chunk: Sequence[object], offset: int) -> None:
        for index, raw in enumerate(chunk, start=offset):
            if self.skip_empty and raw == "":
                continue
            try:
                entry = parse_entry(raw)
            except InvalidEntryError as exc:
                self.reject(index, raw, str(exc))
                continue
            limit = self.min_prefix.get(entry.family) if self.min_prefix else None
            if limit is not None and entry.prefixlen < limit:
                self.reject(index, raw, f"{raw!r} is broader than /{limit}")
            elif entry.is_network:
                self.networks.append(entry)
                self.accepted += 1
            else:
                self.addresses[entry.family].add(entry.text)
                self.accepted += 1

    def reject(self, index: int, raw: object, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < self.sample:
            self.rejected.append(Rejected(self.locate(index), str(raw), reason))

    def result(self) -> ParsedList:
        networks = normalise(self.networks)
        entries = NormalisedEntries(
            addresses_v4=frozenset(self.addresses[4]),
            addresses_v6=frozenset(self.addresses[6]),
            networks_v4=networks.networks_v4,
            networks_v6=networks.networks_v6,
        )
        return ParsedList(entries, self.accepted, self.rejected_count, tuple(self.rejected))
