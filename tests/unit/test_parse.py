"""nft/parse: `nft -j list table` output -> KernelTable, and back to an empty diff."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from repogate.config import Config, parse_config
from repogate.model import CounterValue, DesiredState, KernelChain
from repogate.nft.parse import parse_table
from repogate.plan import diff

Desired = Callable[..., DesiredState]

# Written by hand after `nft -j list table inet repogate` (nft 1.0.6), with the
# element forms nft uses: plain, prefix, range, and {"elem": {...}} when an element
# carries attributes (a counter, a comment, a timeout).
LISTING: list[dict[str, Any]] = [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "repogate", "handle": 7}},
    {
        "counter": {
            "family": "inet",
            "name": "allowed_bitbucket",
            "table": "repogate",
            "handle": 1,
            "packets": 1234,
            "bytes": 98765,
        }
    },
    {
        "counter": {
            "family": "inet",
            "name": "denied_bitbucket",
            "table": "repogate",
            "handle": 2,
            "packets": 3,
            "bytes": 180,
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "client_office_v4_addr",
            "table": "repogate",
            "type": "ipv4_addr",
            "handle": 3,
            "elem": [
                "10.20.0.5",
                {"elem": {"val": "10.20.0.6", "counter": {"packets": 0, "bytes": 0}}},
                {"elem": {"val": "10.20.0.7", "comment": "laptop"}},
            ],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "client_office_v4_net",
            "table": "repogate",
            "type": "ipv4_addr",
            "handle": 4,
            "flags": ["interval"],
            "elem": [
                {"prefix": {"addr": "10.20.0.0", "len": 16}},
                {"range": ["10.21.0.1", "10.21.0.5"]},
                {"elem": {"val": {"prefix": {"addr": "10.22.0.0", "len": 24}}, "comment": "lab"}},
            ],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "client_office_v6_addr",
            "table": "repogate",
            "type": "ipv6_addr",
            "handle": 5,
            # nft prints canonical text, but a hand-made listing may not.
            "elem": ["2001:DB8:0:0::1"],
        }
    },
    {
        "set": {
            "family": "inet",
            "name": "client_office_v6_net",
            "table": "repogate",
            "type": "ipv6_addr",
            "handle": 6,
            "flags": ["interval"],
        }
    },
    {
        "chain": {
            "family": "inet",
            "table": "repogate",
            "name": "gate",
            "handle": 9,
        }
    },
    {
        "chain": {
            "family": "inet",
            "table": "repogate",
            "name": "forward",
            "handle": 10,
            "type": "filter",
            "hook": "forward",
            "prio": 0,
            "policy": "accept",
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "repogate",
            "chain": "gate",
            "handle": 12,
            "comment": "allow office to bitbucket [54af14e0304e]",
            "expr": [
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "right": "@client_office_v4_addr",
                    }
                },
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                        "right": "@dest_bitbucket_v4",
                    }
                },
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                        "right": {"set": [22, 443]},
                    }
                },
                {"counter": "allowed_bitbucket"},
                {"accept": None},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "repogate",
            "chain": "gate",
            "handle": 13,
            "expr": [{"counter": {"packets": 0, "bytes": 0}}],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "repogate",
            "chain": "forward",
            "handle": 14,
            "comment": "repogate [54af14e0304e]",
            "expr": [{"jump": {"target": "gate"}}],
        }
    },
]


def test_parse_sets() -> None:
    table = parse_table("repogate", LISTING)
    assert table.name == "repogate"
    assert set(table.sets) == {
        "client_office_v4_addr",
        "client_office_v4_net",
        "client_office_v6_addr",
        "client_office_v6_net",
    }
    addr = table.sets["client_office_v4_addr"]
    assert (addr.nft_type, addr.interval) == ("ipv4_addr", False)
    assert addr.elements == {"10.20.0.5", "10.20.0.6", "10.20.0.7"}
    net = table.sets["client_office_v4_net"]
    assert (net.nft_type, net.interval) == ("ipv4_addr", True)
    assert net.elements == {"10.20.0.0/16", "10.21.0.1-10.21.0.5", "10.22.0.0/24"}
    assert table.sets["client_office_v6_addr"].elements == {"2001:db8::1"}
    empty = table.sets["client_office_v6_net"]
    assert empty.elements == frozenset()
    assert empty.interval


def test_parse_chains_and_rule_comments() -> None:
    table = parse_table("repogate", LISTING)
    assert table.chains == {
        "gate": KernelChain(
            "gate", None, None, None, None, ("allow office to bitbucket [54af14e0304e]", None)
        ),
        "forward": KernelChain(
            "forward", "forward", "filter", 0, "accept", ("repogate [54af14e0304e]",)
        ),
    }


def test_parse_counters() -> None:
    table = parse_table("repogate", LISTING)
    assert table.counters == {
        "allowed_bitbucket": CounterValue(1234, 98765),
        "denied_bitbucket": CounterValue(3, 180),
    }
    assert not table.is_empty


def test_parse_empty_table() -> None:
    table = parse_table("repogate", LISTING[:2])
    assert table.is_empty
    assert table.sets == table.chains == table.counters == {}


def test_parse_odd_set_type_never_matches_desired() -> None:
    listing = [
        {
            "set": {
                "family": "inet",
                "name": "pairs",
                "table": "repogate",
                "type": ["ipv4_addr", "inet_service"],
                "handle": 1,
            }
        }
    ]
    kernel_set = parse_table("repogate", listing).sets["pairs"]
    assert kernel_set.nft_type not in ("ipv4_addr", "ipv6_addr")


def test_round_trip_listing_from_desired_diffs_empty(
    base_config: Config,
    desired: Desired,
    listing_from: Callable[..., list[dict[str, Any]]],
) -> None:
    state = desired(base_config)
    listing = listing_from(state, {"allowed_bitbucket": (10, 600)})
    table = parse_table(state.table, listing)
    assert {name: s.elements for name, s in table.sets.items()} == {
        name: spec.elements for name, spec in state.sets.items()
    }
    assert table.counters["allowed_bitbucket"] == CounterValue(10, 600)
    assert diff(state, table).is_empty


def test_round_trip_with_single_addresses_in_interval_sets(
    desired: Desired, listing_from: Callable[..., list[dict[str, Any]]]
) -> None:
    # A /32 or /128 in an interval set is listed by nft as a plain address.
    config = parse_config(
        {
            "agent": {"hooks": ["output", "forward"]},
            "destinations": {
                "bb": {"networks": ["192.0.2.1", "192.0.2.2/31", "2001:db8::1/128"], "ports": [22]}
            },
            "clients": [{"name": "a", "type": "static", "addresses": ["2001:DB8:1::/64"]}],
            "rules": [{"clients": ["a"], "destinations": ["bb"]}],
        }
    )
    state = desired(config)
    assert state.sets["dest_bb_v4"].elements == {"192.0.2.1", "192.0.2.2/31"}
    assert state.sets["dest_bb_v6"].elements == {"2001:db8::1"}
    table = parse_table(state.table, listing_from(state))
    assert diff(state, table).is_empty
