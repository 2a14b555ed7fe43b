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
import itertools
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
    def maxlen(self) -> int:
        return 32 if self.family == 4 else 128

    @property
    def start(self) -> int:
        """The first address as an integer."""
        address = self.text.partition("/")[0]
        return int.from_bytes(socket.inet_pton(_AF[self.family], address))

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.text if self.is_network else f"{self.text}/{self.maxlen}")


_AF: dict[int, socket.AddressFamily] = {4: socket.AF_INET, 6: socket.AF_INET6}
_MAXLEN: dict[int, int] = {4: 32, 6: 128}


_V4_MAPPED = bytes(10) + b"\xff\xff"


def canonical_address(text: str) -> tuple[Family, str] | None:
    """Return the family and nft's text form of a single address, or None if it is not one.

    An IPv4-mapped IPv6 address (::ffff:10.0.0.1) is the IPv4 address it names:
    such addresses never appear on the wire, so in an IPv6 set they would match nothing.
    """
    try:
        return 4, socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None
    if packed[:12] == _V4_MAPPED:
        return 4, socket.inet_ntop(socket.AF_INET, packed[12:])
    return 6, socket.inet_ntop(socket.AF_INET6, packed)


def address_text(family: int, value: int) -> str:
    return socket.inet_ntop(_AF[family], value.to_bytes(4 if family == 4 else 16))


def parse_entry(raw: object) -> Entry:
    """Parse one address or CIDR. A /32 or /128 becomes a single address.

    Integer arithmetic instead of `ipaddress`: networks are checked and collapsed
    by the thousand, and `ipaddress` objects cost ~10x more.
    """
    if not isinstance(raw, str):
        raise InvalidEntryError(f"{raw!r} is not a string")
    text = raw.strip()
    if "/" not in text:
        found = canonical_address(text)
        if found is None:
            raise InvalidEntryError(f"{raw!r} is not an IP address or network")
        family, canonical = found
        return Entry(family, canonical, False, _MAXLEN[family])
    address_part, _, length_part = text.partition("/")
    found = canonical_address(address_part)
    if found is None or not length_part.isdigit() or length_part != str(int(length_part)):
        raise InvalidEntryError(f"{raw!r} is not an IP address or network")
    family, canonical = found
    prefixlen, maxlen = int(length_part), _MAXLEN[family]
    if family == 4 and ":" in address_part:  # IPv4-mapped: ::ffff:10.0.0.0/120
        prefixlen -= 96
        if prefixlen < 0:
            raise InvalidEntryError(f"{raw!r} is broader than the IPv4-mapped range")
    if prefixlen > maxlen:
        raise InvalidEntryError(f"{raw!r} is not an IP address or network")
    value = int.from_bytes(socket.inet_pton(_AF[family], canonical))
    host_mask = (1 << (maxlen - prefixlen)) - 1
    if value & host_mask:
        suggested = f"{address_text(family, value & ~host_mask)}/{prefixlen}"
        raise InvalidEntryError(f"{raw!r} has host bits set (did you mean '{suggested}'?)")
    return entry_from_range(family, value, prefixlen)


def entry_from_range(family: Family, start: int, prefixlen: int) -> Entry:
    address = address_text(family, start)
    if prefixlen == _MAXLEN[family]:
        return Entry(family, address, False, prefixlen)
    return Entry(family, f"{address}/{prefixlen}", True, prefixlen)


def entry_from_network(network: IPNetwork) -> Entry:
    family: Family = 4 if network.version == 4 else 6
    return entry_from_range(family, int(network.network_address), network.prefixlen)


def collapse(family: Family, blocks: Iterable[tuple[int, int]]) -> list[Entry]:
    """Merge (start, prefixlen) blocks that overlap or touch into the fewest CIDR blocks.

    nft rejects overlapping intervals in a set, and fewer intervals are cheaper.
    """
    maxlen = _MAXLEN[family]
    spans = sorted((start, start + (1 << (maxlen - length)) - 1) for start, length in blocks)
    merged: list[list[int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    result: list[Entry] = []
    for first, last in merged:
        low = first
        while low <= last:
            aligned = (low & -low).bit_length() - 1 if low else maxlen
            fits = (last - low + 1).bit_length() - 1
            bits = min(aligned, fits)
            result.append(entry_from_range(family, low, maxlen - bits))
            low += 1 << bits
    return result


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
    networks: dict[Family, list[tuple[int, int]]] = {4: [], 6: []}
    for entry in entries:
        if entry.is_network:
            networks[entry.family].append((entry.start, entry.prefixlen))
        else:
            addresses[entry.family].add(entry.text)
    return NormalisedEntries(
        addresses_v4=frozenset(addresses[4]),
        addresses_v6=frozenset(addresses[6]),
        networks_v4=frozenset(e.text for e in collapse(4, networks[4])),
        networks_v6=frozenset(e.text for e in collapse(6, networks[6])),
    )


def element_order(element: str) -> tuple[int, bytes, int]:
    """Numeric order for element texts (addresses, CIDRs, ranges): IPv4 before IPv6."""
    address = element.partition("/")[0].partition("-")[0]
    length = element.partition("/")[2]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        packed = socket.inet_pton(family, address)
    except OSError:
        return (2, element.encode(), 0)
    return (0 if family == socket.AF_INET else 1, packed, int(length or 0))


def contains(entry_text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an entry (address or network) covers `address`; anything else (a range
    someone put in a set, a torn audit line) covers nothing."""
    try:
        if "/" in entry_text:
            return address in ipaddress.ip_network(entry_text)
        return ipaddress.ip_address(entry_text) == address
    except ValueError:
        return False


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
            parser.clean_v4_chunks.append(chunk)
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
    clean_v4_chunks: list[Sequence[object]] = field(default_factory=list)
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
        clean = itertools.chain.from_iterable(self.clean_v4_chunks)
        entries = NormalisedEntries(
            addresses_v4=frozenset(itertools.chain(self.addresses[4], clean)),  # type: ignore[arg-type]
            addresses_v6=frozenset(self.addresses[6]),
            networks_v4=networks.networks_v4,
            networks_v6=networks.networks_v6,
        )
        return ParsedList(entries, self.accepted, self.rejected_count, tuple(self.rejected))
