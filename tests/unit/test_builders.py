"""nft/builders: pure JSON commands, in the order one transaction needs them."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def test_allow_rule_shape() -> None:
    rule = RuleSpec(4, "dest_bb_v4", (22, 443), "allowed_bb", "client_a_v4_net", "allow a to bb")
    assert build_rule("repogate", rule, "0123456789ab") == {
        **TABLE,
        "chain": "gate",
        "expr": [
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": "@client_a_v4_net",
                }
            },
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                    "right": "@dest_bb_v4",
                }
            },
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                    "right": {"set": [22, 443]},
                }
            },
            {"counter": "allowed_bb"},
            {"accept": None},
        ],
        "comment": "allow a to bb [0123456789ab]",
    }


def test_deny_rule_is_a_tcp_reset_without_source_match() -> None:
    rule = RuleSpec(6, "dest_bb_v6", (22,), "denied_bb", None, "refuse others to bb")
    built = build_rule("repogate", rule, "d1")
    expr = built["expr"]
    assert expr[0]["match"]["left"] == {"payload": {"protocol": "ip6", "field": "daddr"}}
    assert expr[1]["match"]["right"] == 22  # one port: a plain value, not a set
    assert expr[2] == {"counter": "denied_bb"}
    assert expr[3] == {"reject": {"type": "tcp reset"}}
    assert len(expr) == 4
    assert not any("saddr" in json.dumps(e) for e in expr)
    assert built["comment"] == "refuse others to bb [d1]"


def test_build_rules_ends_with_jumps(desired: Desired) -> None:
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
    assert [r["chain"] for r in rules] == ["gate"] * len(state.rules) + ["forward", "output"]
    digest = state.rules_digest
    assert rules[-1] == {
        **TABLE,
        "chain": "output",
        "expr": [{"jump": {"target": "gate"}}],
        "comment": f"repogate [{digest}]",
    }
    assert all(r["comment"].endswith(f" [{digest}]") for r in rules)


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
    assert kinds.count(("add", "rule")) == len(state.rules) + 1
    chains = [c["add"]["chain"]["name"] for c in commands if kind_of(c) == ("add", "chain")]
    assert chains == ["gate", "forward"]  # the jump target exists before the base chain
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
        ("add", "rule"),
        ("add", "rule"),
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
    assert "meta" not in str(refuse["expr"])  # the deny rule holds for every interface
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
