"""addresses: parsing one entry, normalising and collapsing a list of them."""

from __future__ import annotations

import ipaddress
import random
import re

import pytest

from repogate.addresses import (
    Entry,
    InvalidEntryError,
    canonical_address,
    contains,
    entry_from_network,
    normalise,
    parse_entry,
)
from repogate.plan import destination_elements


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("10.0.0.1", Entry(4, "10.0.0.1", False, 32)),
        ("  10.0.0.1 ", Entry(4, "10.0.0.1", False, 32)),
        ("10.0.0.0/24", Entry(4, "10.0.0.0/24", True, 24)),
        ("10.0.0.1/32", Entry(4, "10.0.0.1", False, 32)),
        ("0.0.0.0/0", Entry(4, "0.0.0.0/0", True, 0)),
        ("2001:db8::1", Entry(6, "2001:db8::1", False, 128)),
        ("2001:db8::1/128", Entry(6, "2001:db8::1", False, 128)),
        ("2001:db8::/32", Entry(6, "2001:db8::/32", True, 32)),
        # nft prints IPv6 lower-case and compressed; desired elements must match that text.
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", Entry(6, "2001:db8::1", False, 128)),
        ("2001:DB8:0:0:1::/80", Entry(6, "2001:db8:0:0:1::/80", True, 80)),
        ("::ffff:10.0.0.1", Entry(4, "10.0.0.1", False, 32)),  # IPv4-mapped is IPv4
    ],
)
def test_parse_entry_normalises(raw: str, expected: Entry) -> None:
    assert parse_entry(raw) == expected


def test_ipv6_network_text_is_canonical() -> None:
    entry = parse_entry("2001:DB8:00AB:0::/64")
    assert entry.text == "2001:db8:ab::/64"
    assert entry.network == ipaddress.ip_network("2001:db8:ab::/64")


def test_single_address_network_property_is_host_route() -> None:
    assert parse_entry("10.0.0.1").network == ipaddress.ip_network("10.0.0.1/32")
    assert parse_entry("::1").network == ipaddress.ip_network("::1/128")
    assert parse_entry("::1").maxlen == 128


@pytest.mark.parametrize(
    ("raw", "suggestion"),
    [
        ("10.0.0.1/24", "10.0.0.0/24"),
        ("192.168.1.77/16", "192.168.0.0/16"),
        ("2001:db8::1/64", "2001:db8::/64"),
    ],
)
def test_host_bits_set_suggests_the_network(raw: str, suggestion: str) -> None:
    with pytest.raises(InvalidEntryError) as caught:
        parse_entry(raw)
    assert str(caught.value) == f"{raw!r} has host bits set (did you mean '{suggestion}'?)"


@pytest.mark.parametrize(
    "raw",
    [
        "10.0.0.999",
        "1.2.3",
        "",
        " ",
        "fe80::1%eth0",
        "010.0.0.1",
        "10.0.0.0/33",
        "2001:db8::/129",
        "10.0.0.0/",
        "/24",
        "10.0.0.0/-1",
        "10.0.0.0/ 24",
        "10.0.0.0/24/8",
        "10.0.0.0/255.255.255.0",
        "bitbucket.org",
        "10.0.0.1-10.0.0.9",
        "1.2.3.4 5.6.7.8",
    ],
)
def test_garbage_is_refused(raw: str) -> None:
    with pytest.raises(InvalidEntryError) as caught:
        parse_entry(raw)
    assert str(caught.value) == f"{raw!r} is not an IP address or network"


@pytest.mark.parametrize("raw", [None, 10, 167772161, 1.5, b"10.0.0.1", ["10.0.0.1"], True])
def test_non_strings_are_refused(raw: object) -> None:
    with pytest.raises(InvalidEntryError, match="is not a string"):
        parse_entry(raw)


def test_invalid_entry_error_is_a_value_error() -> None:
    assert issubclass(InvalidEntryError, ValueError)


def test_canonical_address() -> None:
    assert canonical_address("10.1.2.3") == (4, "10.1.2.3")
    assert canonical_address("2001:DB8::0:1") == (6, "2001:db8::1")
    assert canonical_address("10.1.2.3/32") is None
    assert canonical_address("nonsense") is None


def test_entry_from_network_full_length_is_an_address() -> None:
    assert entry_from_network(ipaddress.ip_network("10.1.1.1/32")).is_network is False
    assert entry_from_network(ipaddress.ip_network("10.1.1.0/31")).text == "10.1.1.0/31"


def _normalise(*raw: str):  # type: ignore[no-untyped-def]
    return normalise(parse_entry(text) for text in raw)


def test_normalise_splits_families_and_kinds() -> None:
    result = _normalise("10.0.0.1", "10.1.0.0/16", "2001:db8::1", "2001:db8:1::/48", "10.0.0.1")
    assert result.addresses_v4 == {"10.0.0.1"}
    assert result.networks_v4 == {"10.1.0.0/16"}
    assert result.addresses_v6 == {"2001:db8::1"}
    assert result.networks_v6 == {"2001:db8:1::/48"}
    assert len(result) == 4


def test_adjacent_networks_collapse() -> None:
    result = _normalise("10.0.0.0/25", "10.0.0.128/25")
    assert result.networks_v4 == {"10.0.0.0/24"}


def test_network_inside_a_broader_one_disappears() -> None:
    result = _normalise("10.20.0.0/16", "10.20.30.0/24", "10.20.255.0/24")
    assert result.networks_v4 == {"10.20.0.0/16"}


def test_overlapping_and_disjoint_networks() -> None:
    result = _normalise("10.0.0.0/23", "10.0.1.0/24", "10.0.4.0/24", "192.168.0.0/24")
    assert result.networks_v4 == {"10.0.0.0/23", "10.0.4.0/24", "192.168.0.0/24"}


def test_non_sibling_adjacent_networks_do_not_merge() -> None:
    # 10.0.1.0/24 + 10.0.2.0/24 are adjacent but not one /23: both stay.
    result = _normalise("10.0.1.0/24", "10.0.2.0/24")
    assert result.networks_v4 == {"10.0.1.0/24", "10.0.2.0/24"}


def test_ipv6_networks_collapse() -> None:
    result = _normalise("2001:db8::/33", "2001:db8:8000::/33", "2001:db8:1::/48")
    assert result.networks_v6 == {"2001:db8::/32"}


def test_families_are_kept_apart() -> None:
    # ::/96 and 0.0.0.0/0 cover "the same" integers; they must never be mixed.
    result = _normalise("0.0.0.0/1", "128.0.0.0/1", "::/97", "::8000:0/97")
    assert result.networks_v4 == {"0.0.0.0/0"}
    assert result.networks_v6 == {"::/96"}


def test_addresses_are_not_collapsed_into_networks() -> None:
    # Single addresses live in the hash set even when a network covers them:
    # the sets are separate, so nothing overlaps inside one interval set.
    result = _normalise("10.0.0.0/24", "10.0.0.5")
    assert result.addresses_v4 == {"10.0.0.5"}
    assert result.networks_v4 == {"10.0.0.0/24"}


def test_normalise_empty() -> None:
    result = normalise([])
    assert len(result) == 0
    assert result.networks_v4 == frozenset()


def test_contains() -> None:
    ip = ipaddress.ip_address
    assert contains("10.0.0.0/24", ip("10.0.0.200"))
    assert not contains("10.0.0.0/24", ip("10.0.1.1"))
    assert contains("10.0.0.5", ip("10.0.0.5"))
    assert not contains("10.0.0.5", ip("10.0.0.6"))
    assert contains("2001:db8::/32", ip("2001:db8:ffff::1"))
    assert not contains("2001:db8::/32", ip("10.0.0.1"))


# --- collapsing agrees with the standard library on many random lists ---


def _random_networks(rng: random.Random, family: int, count: int) -> list[str]:
    """Networks crowded into a small space, so overlaps and neighbours are common."""
    maxlen = 32 if family == 4 else 128
    base = int(ipaddress.ip_address("10.0.0.0" if family == 4 else "2001:db8::"))
    texts = []
    for _ in range(count):
        length = rng.randint(maxlen - 12, maxlen)
        start = base + (rng.randrange(1 << 12) >> (maxlen - length) << (maxlen - length))
        texts.append(str(ipaddress.ip_network((start, length))))
    return texts


@pytest.mark.parametrize("family", [4, 6])
def test_collapse_matches_ipaddress(family: int) -> None:
    rng = random.Random(family)
    for _ in range(200):
        texts = _random_networks(rng, family, rng.randint(1, 25))
        result = normalise(parse_entry(text) for text in texts)
        networks = [ipaddress.ip_network(t) for t in texts]
        got_networks = result.networks_v4 if family == 4 else result.networks_v6
        got_addresses = result.addresses_v4 if family == 4 else result.addresses_v6
        # /32 and /128 entries stay in the address sets, everything else is collapsed.
        wider = [n for n in networks if n.prefixlen < n.max_prefixlen]
        assert got_networks == {str(n) for n in ipaddress.collapse_addresses(wider)}, texts
        assert got_addresses == {
            str(n.network_address) for n in networks if n.prefixlen == n.max_prefixlen
        }


@pytest.mark.parametrize("family", [4, 6])
def test_destination_elements_match_ipaddress(family: int) -> None:
    rng = random.Random(100 + family)
    for _ in range(200):
        texts = _random_networks(rng, family, rng.randint(1, 25))
        entries = [parse_entry(text) for text in texts]
        expected = {
            entry_from_network(n).text
            for n in ipaddress.collapse_addresses(ipaddress.ip_network(t) for t in texts)
        }
        assert destination_elements(entries)[family] == expected, texts  # type: ignore[index]


def test_parse_entry_host_bits_match_ipaddress() -> None:
    rng = random.Random(7)
    for _ in range(500):
        family = rng.choice([4, 6])
        maxlen = 32 if family == 4 else 128
        value = rng.getrandbits(maxlen)
        length = rng.randint(0, maxlen)
        address = ipaddress.ip_address(value) if family == 4 else ipaddress.IPv6Address(value)
        text = f"{address}/{length}"
        try:
            strict = ipaddress.ip_network(text)
        except ValueError:
            suggestion = ipaddress.ip_network(text, strict=False)
            with pytest.raises(
                InvalidEntryError, match=re.escape(f"(did you mean '{suggestion}'?)")
            ):
                parse_entry(text)
        else:
            assert parse_entry(text) == entry_from_network(strict)
