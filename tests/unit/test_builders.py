"""nft/builders: pure JSON commands, in the order one transaction needs them."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from repogate.config import Config, parse_config
from repogate.errors import ConfigError
from repogate.model import DesiredState, Plan, RuleSpec, SetChange, SetSpec
from repogate.nft.builders import (
    build_chain,
    build_delete_table,
    build_plan,
    build_rule,
    build_rules,
    build_set,
    build_set_change,
    transaction,
)
from repogate.nft.layout import GateRule, gate_layout
from repogate.nft.render import render
from repogate.plan import diff
from tests.unit.conftest import base_dict, sync

Desired = Callable[..., DesiredState]
Json = dict[str, Any]
TABLE = {"family": "inet", "table": "repogate"}


def ref(name: str) -> Json:
    return {**TABLE, "name": name}


def kind_of(command: Json) -> tuple[str, str]:
    """('add', 'set'), ('flush', 'chain'), ..."""
    ((verb, body),) = command.items()
    ((kind, _),) = body.items()
    return verb, kind


def test_transaction_is_wrapped_with_metainfo() -> None:
    commands = [{"add": {"table": {"family": "inet", "name": "t"}}}]
    assert transaction(commands) == {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"add": {"table": {"family": "inet", "name": "t"}}},
        ]
    }
    assert transaction([]) == {"nftables": [{"metainfo": {"json_schema_version": 1}}]}


def test_build_set() -> None:
    assert build_set("repogate", SetSpec("client_a_v4_addr", 4, False, frozenset())) == {
        **ref("client_a_v4_addr"),
        "type": "ipv4_addr",
    }
    assert build_set("repogate", SetSpec("client_a_v6_net", 6, True, frozenset())) == {
        **ref("client_a_v6_net"),
        "type": "ipv6_addr",
        "flags": ["interval"],
    }


def test_element_shapes() -> None:
    spec = SetSpec("dest_x_v4", 4, True, frozenset())
    change = SetChange("dest_x_v4", frozenset({"10.0.0.0/8", "192.0.2.1"}), frozenset())
    ((verb, body),) = build_set_change("repogate", spec, change)[0].items()
    assert verb == "add"
    elements = body["element"].pop("elem")
    assert body["element"] == ref("dest_x_v4")
    assert sorted(elements, key=str) == sorted(
        [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "192.0.2.1"], key=str
    )


def test_ipv6_prefix_shape() -> None:
    spec = SetSpec("dest_x_v6", 6, True, frozenset())
    change = SetChange("dest_x_v6", frozenset({"2401:1d80:1010::/48"}), frozenset())
    assert build_set_change("repogate", spec, change) == [
        {
            "add": {
                "element": {
                    **ref("dest_x_v6"),
                    "elem": [{"prefix": {"addr": "2401:1d80:1010::", "len": 48}}],
                }
            }
        }
    ]


def test_element_deletes_come_before_adds() -> None:
    spec = SetSpec("client_a_v4_net", 4, True, frozenset())
    change = SetChange(
        "client_a_v4_net", frozenset({"10.0.0.0/24"}), frozenset({"10.0.0.0/25", "10.0.0.128/25"})
    )
    commands = build_set_change("repogate", spec, change)
    assert [kind_of(c) for c in commands] == [("delete", "element"), ("add", "element")]
    deleted = commands[0]["delete"]["element"]["elem"]
    assert sorted(e["prefix"]["addr"] for e in deleted) == ["10.0.0.0", "10.0.0.128"]


def test_delete_only_change() -> None:
    spec = SetSpec("client_a_v4_addr", 4, False, frozenset())
    change = SetChange("client_a_v4_addr", frozenset(), frozenset({"10.0.0.1"}))
    assert build_set_change("repogate", spec, change) == [
        {"delete": {"element": {**ref("client_a_v4_addr"), "elem": ["10.0.0.1"]}}}
    ]


def test_replace_flushes_then_refills_without_element_deletes() -> None:
    spec = SetSpec("client_a_v4_net", 4, True, frozenset({"10.1.0.0/16"}))
    change = SetChange(
        "client_a_v4_net", frozenset({"10.1.0.0/16"}), frozenset({"10.2.0.0/16"}), replace=True
    )
    assert build_set_change("repogate", spec, change) == [
        {"flush": {"set": ref("client_a_v4_net")}},
        {
            "add": {
                "element": {
                    **ref("client_a_v4_net"),
                    "elem": [{"prefix": {"addr": "10.1.0.0", "len": 16}}],
                }
            }
        },
    ]


def test_replace_to_empty_only_flushes() -> None:
    spec = SetSpec("client_a_v4_net", 4, True, frozenset())
    change = SetChange("client_a_v4_net", frozenset(), frozenset({"10.2.0.0/16"}), replace=True)
    assert build_set_change("repogate", spec, change) == [
        {"flush": {"set": ref("client_a_v4_net")}}
    ]


def test_build_chain() -> None:
    assert build_chain("repogate", "gate") == ref("gate")
    assert build_chain("repogate", "output") == {
        **ref("output"),
        "type": "filter",
        "hook": "output",
        "prio": 0,
        "policy": "accept",
    }


def match(protocol: str, field: str, right: Any) -> Json:
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": protocol, "field": field}},
            "right": right,
        }
    }


def test_allow_rule_shape() -> None:
    """In a destination's chain the jump already matched the destination and its ports."""
    spec = RuleSpec(4, "dest_bb_v4", (22, 443), "allowed_bb", "client_a_v4_net", "allow a to bb")
    assert build_rule("repogate", "gate_bb_v4", GateRule(spec, ()), "0123456789ab") == {
        **TABLE,
        "chain": "gate_bb_v4",
        "expr": [
            match("ip", "saddr", "@client_a_v4_net"),
            {"counter": "allowed_bb"},
            {"accept": None},
        ],
        "comment": "allow a to bb [0123456789ab]",
    }
    narrower = build_rule("repogate", "gate_bb_v4", GateRule(spec, (22, 443)), "d")
    assert narrower["expr"][1] == match("tcp", "dport", {"set": [22, 443]})


def test_deny_rule_is_a_tcp_reset_without_source_match() -> None:
    spec = RuleSpec(6, "dest_bb_v6", (22,), "denied_bb", None, "refuse others to bb")
    built = build_rule("repogate", "gate_bb_v6", GateRule(spec, ()), "d1")
    # No port test left to say TCP, so the rule says it, as nft would add it itself.
    l4proto = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    assert built["expr"] == [l4proto, {"counter": "denied_bb"}, {"reject": {"type": "tcp reset"}}]
    assert built["comment"] == "refuse others to bb [d1]"
    with_port = build_rule("repogate", "gate_bb_v6", GateRule(spec, (22,)), "d1")["expr"]
    assert with_port[0] == match("tcp", "dport", 22)  # one port: a plain value, not a set
    assert len(with_port) == 3


def test_build_rules_in_the_layout(desired: Desired) -> None:
    state = desired(
        parse_config(
            {
                "agent": {"hooks": ["forward", "output"]},
                "destinations": {"bb": {"networks": ["192.0.2.0/24"], "ports": [22]}},
                "clients": [{"name": "a", "type": "static", "addresses": ["10.0.0.1"]}],
            }
        )
    )
    commands = build_rules(state)
    rules = [c["add"]["rule"] for c in commands]
    per_family = len(state.rules) // 2
    assert [r["chain"] for r in rules] == (
        ["gate_bb_v4"] * per_family + ["gate_bb_v6"] * per_family + ["gate"] * 2
    ) + ["forward", "output"]
    digest = state.rules_digest
    assert rules[-1] == {
        **TABLE,
        "chain": "output",
        "expr": [match("tcp", "dport", 22), {"jump": {"target": "gate"}}],
        "comment": f"repogate [{digest}]",
    }
    assert rules[-4] == {
        **TABLE,
        "chain": "gate",
        "expr": [match("ip", "daddr", "@dest_bb_v4"), {"jump": {"target": "gate_bb_v4"}}],
        "comment": f"to gate_bb_v4 [{digest}]",
    }
    assert all(r["comment"].endswith(f" [{digest}]") for r in rules)


def test_the_hook_tests_up_to_three_ports_one_by_one(desired: Desired) -> None:
    def jumps(ports: list[int]) -> list[Any]:
        config = {
            "destinations": {"bb": {"networks": ["192.0.2.0/24"], "ports": ports}},
            "clients": [{"name": "a", "type": "static", "addresses": ["10.0.0.1"]}],
        }
        rules = [c["add"]["rule"] for c in build_rules(desired(parse_config(config)))]
        return [r["expr"][0]["match"]["right"] for r in rules if r["chain"] == "forward"]

    assert jumps([443, 22, 7999]) == [22, 443, 7999]
    assert jumps([22, 443, 7999, 8443]) == [{"set": [22, 443, 7999, 8443]}]


def test_build_delete_table() -> None:
    assert build_delete_table("repogate") == [
        {"delete": {"table": {"family": "inet", "name": "repogate"}}}
    ]


def test_full_plan_order(base_config: Config, desired: Desired) -> None:
    state = desired(base_config)
    commands = build_plan(diff(state, None), state)
    kinds = [kind_of(c) for c in commands]
    assert kinds[0] == ("add", "table")
    first = {kind: kinds.index(kind) for kind in reversed(kinds)}
    last = {kind: len(kinds) - 1 - kinds[::-1].index(kind) for kind in kinds}
    # counters and sets exist before elements, chains before rules; rules are last.
    assert last[("add", "counter")] < first[("add", "set")]
    assert last[("add", "set")] < first[("add", "element")]
    assert last[("add", "element")] < first[("add", "chain")]
    assert last[("add", "chain")] < first[("add", "rule")]
    assert kinds[-1] == ("add", "rule")
    # the rules, two jumps from gate (one per family), one from the hook per port
    assert kinds.count(("add", "rule")) == len(state.rules) + 2 + 2
    chains = [c["add"]["chain"]["name"] for c in commands if kind_of(c) == ("add", "chain")]
    # jump targets exist before the chains that jump to them
    assert chains == ["gate_bitbucket_v4", "gate_bitbucket_v6", "gate", "forward"]
    json.dumps(transaction(commands))  # everything is plain JSON


def test_teardown_and_rebuild_order() -> None:
    """Every kind of command in one plan: the order keeps references valid throughout."""
    state = DesiredState(
        table="repogate",
        hooks=("forward",),
        sets={
            "client_a_v4_addr": SetSpec("client_a_v4_addr", 4, False, frozenset({"10.0.0.2"})),
            "dest_b_v4": SetSpec("dest_b_v4", 4, True, frozenset({"192.0.2.0/24"})),
        },
        counters=("allowed_b", "denied_b"),
        rules=(RuleSpec(4, "dest_b_v4", (22,), "allowed_b", "client_a_v4_addr", "allow a to b"),),
    )
    plan = Plan(
        add_sets=("dest_b_v4",),
        delete_sets=("client_old_v4_addr", "dest_b_v4"),
        add_counters=("denied_b",),
        delete_counters=("allowed_old",),
        add_chains=("forward",),
        delete_chains=("forward", "extra"),
        flush_chains=("extra", "forward", "gate"),
        rewrite_rules=True,
        set_changes=(
            SetChange("client_a_v4_addr", frozenset({"10.0.0.2"}), frozenset({"10.0.0.1"})),
            SetChange("dest_b_v4", frozenset({"192.0.2.0/24"}), frozenset()),
        ),
    )
    kinds = [kind_of(c) for c in build_plan(plan, state)]
    assert kinds == [
        ("flush", "chain"),
        ("flush", "chain"),
        ("flush", "chain"),
        ("delete", "chain"),
        ("delete", "chain"),
        ("delete", "set"),
        ("delete", "set"),
        ("delete", "counter"),
        ("add", "counter"),
        ("add", "set"),
        ("delete", "element"),
        ("add", "element"),
        ("add", "element"),
        ("add", "chain"),
        ("add", "rule"),  # gate_b_v4's one rule
        ("add", "rule"),  # gate's jump to it
        ("add", "rule"),  # forward's jump on port 22
    ]


def test_empty_plan_builds_nothing(base_config: Config, desired: Desired) -> None:
    assert build_plan(Plan(), desired(base_config)) == []


def test_a_group_bound_to_interfaces_is_admitted_only_from_them(
    config_dict: dict[str, Any], kernel: Any
) -> None:
    config_dict["clients"][1]["interfaces"] = ["wg0"]
    config_dict["clients"][0]["interfaces"] = ["eth1", "eth2"]
    config = parse_config(config_dict)
    result = sync(config, kernel)  # the fake kernel checks every expression
    allow = [c["add"]["rule"] for c in result.commands if "rule" in c.get("add", {})]
    vpn = next(r for r in allow if r["comment"].startswith("allow vpn"))
    assert vpn["expr"][0] == {
        "match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wg0"}
    }
    office = next(r for r in allow if r["comment"].startswith("allow office"))
    assert office["expr"][0]["match"]["right"] == {"set": ["eth1", "eth2"]}
    refuse = next(r for r in allow if r["comment"].startswith("refuse"))
    assert "iifname" not in str(refuse["expr"])  # the deny rule holds for every interface
    text = render(result.desired)
    assert 'iifname "wg0" ip saddr @client_vpn_v4_addr' in text
    assert 'iifname { "eth1", "eth2" } ip saddr @client_office_v4_addr' in text
    # Binding changes the rules' fingerprint, so a running table gets them rewritten.
    unbound = sync(parse_config(base_dict()), kernel)
    assert unbound.plan.rewrite_rules


def test_interfaces_are_checked_with_their_key_path(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["interfaces"] = ["eth/1", "x" * 16]
    with pytest.raises(ConfigError) as error:
        parse_config(config_dict)
    text = str(error.value)
    assert "clients[0].interfaces[0]: 'eth/1' is not an interface name" in text
    assert "clients[0].interfaces[1]" in text


# --- the layout keeps every verdict ---


@dataclass(frozen=True)
class Packet:
    family: int
    sources: frozenset[str]  # the client sets holding its source address
    destinations: frozenset[str]  # the destination sets holding its destination address
    port: int
    iifname: str


def _admits(spec: RuleSpec, packet: Packet, ports: tuple[int, ...]) -> bool:
    return (
        spec.family == packet.family
        and (not spec.interfaces or packet.iifname in spec.interfaces)
        and (spec.client_set is None or spec.client_set in packet.sources)
        and (not ports or packet.port in ports)
    )


def flat_verdict(state: DesiredState, packet: Packet) -> tuple[str, str] | None:
    """The flat layout before nft.layout: every rule, client and destination and ports."""
    for spec in state.rules:
        if spec.destination_set in packet.destinations and _admits(spec, packet, spec.ports):
            return spec.verdict, spec.counter
    return None


def layout_verdict(state: DesiredState, packet: Packet) -> tuple[str, str] | None:
    layout = gate_layout(state.rules)
    if not any(packet.port in ports for ports in layout.hook_ports):
        return None
    for chain in layout.destinations:
        if chain.family != packet.family or chain.destination_set not in packet.destinations:
            continue
        if chain.ports and packet.port not in chain.ports:
            continue
        for rule in chain.rules:  # a jump: no match here returns to gate's next rule
            if _admits(rule.spec, packet, rule.ports):
                return rule.spec.verdict, rule.spec.counter
    return None


def test_every_packet_gets_the_verdict_of_the_flat_layout(desired: Desired) -> None:
    config = parse_config(
        {
            "destinations": {
                "bb": {"networks": ["192.0.2.0/24", "2001:db8:b::/48"], "ports": [22, 443]},
                "mirror": {"networks": ["192.0.2.0/25"], "ports": [443, 8080]},  # overlaps bb
            },
            "clients": [
                {"name": "a", "type": "static", "addresses": ["10.0.0.1"], "interfaces": ["wg0"]},
                {"name": "b", "type": "static", "addresses": ["10.1.0.0/16", "2001:db8::1"]},
            ],
            "rules": [
                {"clients": ["a"], "destinations": ["bb", "mirror"]},
                {"clients": ["b"], "destinations": ["bb"], "ports": [22]},
                {"clients": ["b"], "destinations": ["mirror"], "ports": [8080]},
            ],
        }
    )
    state = desired(config)
    seen: set[tuple[str, str] | None] = set()
    for family in (4, 6):
        sources = [s for s in state.sets if s.startswith("client_") and f"_v{family}_" in s]
        destinations = [s for s in state.sets if s.startswith("dest_") and s.endswith(f"{family}")]
        for clients, dests, port, iifname in itertools.product(
            subsets(sources), subsets(destinations), (22, 443, 8080, 9), ("wg0", "eth0")
        ):
            packet = Packet(family, clients, dests, port, iifname)
            verdict = flat_verdict(state, packet)
            assert layout_verdict(state, packet) == verdict, packet
            seen.add(verdict)
    assert len(seen) == 5  # accepted and refused for both, and untouched: the test has reach


def subsets(items: list[str]) -> list[frozenset[str]]:
    return [
        frozenset(chosen)
        for size in range(len(items) + 1)
        for chosen in itertools.combinations(items, size)
    ]
