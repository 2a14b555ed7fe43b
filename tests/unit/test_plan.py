"""plan: desired state from the config, and the minimal diff against the kernel."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from repogate import plan as plan_module
from repogate.config import Config, parse_config
from repogate.model import (
    CounterValue,
    DesiredState,
    KernelChain,
    KernelSet,
    KernelTable,
    Plan,
    SetChange,
)
from repogate.nft.builders import build_plan
from repogate.plan import (
    chain_matches,
    destination_elements,
    diff,
    enforced_entries,
    should_replace_interval,
)

Desired = Callable[..., DesiredState]
KernelFrom = Callable[..., KernelTable]

# The chains of the base config, jump targets first (nft.layout).
CHAINS = ("gate_bitbucket_v4", "gate_bitbucket_v6", "gate", "forward")

GROUP_SETS = (
    "client_office_v4_addr",
    "client_office_v4_net",
    "client_office_v6_addr",
    "client_office_v6_net",
    "client_vpn_v4_addr",
    "client_vpn_v4_net",
    "client_vpn_v6_addr",
    "client_vpn_v6_net",
)


def with_sets(table: KernelTable, **sets: KernelSet | None) -> KernelTable:
    """A copy of `table` with sets replaced, added, or (None) removed."""
    new = dict(table.sets)
    for name, kernel_set in sets.items():
        if kernel_set is None:
            new.pop(name, None)
        else:
            new[name] = kernel_set
    return dataclasses.replace(table, sets=new)


def with_chains(table: KernelTable, **chains: KernelChain | None) -> KernelTable:
    new = dict(table.chains)
    for name, chain in chains.items():
        if chain is None:
            new.pop(name, None)
        else:
            new[name] = chain
    return dataclasses.replace(table, chains=new)


def edited(config_dict: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> Config:
    edit(config_dict)
    return parse_config(config_dict)


# --- desired state ---


def test_desired_sets(base_config: Config, desired: Desired) -> None:
    state = desired(base_config)
    assert state.table == "repogate"
    assert state.hooks == ("forward",)
    assert set(state.sets) == {*GROUP_SETS, "dest_bitbucket_v4", "dest_bitbucket_v6"}
    layout = {
        name: (spec.family, spec.nft_type, spec.interval, set(spec.elements))
        for name, spec in state.sets.items()
    }
    assert layout == {
        "client_office_v4_addr": (4, "ipv4_addr", False, {"10.9.8.7"}),
        "client_office_v4_net": (4, "ipv4_addr", True, {"10.20.0.0/16"}),
        "client_office_v6_addr": (6, "ipv6_addr", False, {"2001:db8::5"}),
        "client_office_v6_net": (6, "ipv6_addr", True, {"2001:db8:20::/48"}),
        "client_vpn_v4_addr": (4, "ipv4_addr", False, set()),
        "client_vpn_v4_net": (4, "ipv4_addr", True, {"10.30.0.0/24"}),
        "client_vpn_v6_addr": (6, "ipv6_addr", False, set()),
        "client_vpn_v6_net": (6, "ipv6_addr", True, set()),
        "dest_bitbucket_v4": (4, "ipv4_addr", True, {"104.192.136.0/21", "185.166.140.0/22"}),
        "dest_bitbucket_v6": (6, "ipv6_addr", True, {"2401:1d80:1010::/48"}),
    }
    assert state.counters == ("allowed_bitbucket", "denied_bitbucket")
    assert set(state.groups) == {"office", "vpn"}
    assert len(state.groups["office"]) == 4


def test_desired_collapses_client_networks(config_dict: dict[str, Any], desired: Desired) -> None:
    config_dict["clients"][1]["addresses"] = ["10.30.0.0/25", "10.30.0.128/25", "10.30.0.7/32"]
    state = desired(parse_config(config_dict))
    assert state.sets["client_vpn_v4_net"].elements == {"10.30.0.0/24"}
    assert state.sets["client_vpn_v4_addr"].elements == {"10.30.0.7"}


def test_rule_order_allows_before_deny_per_family(base_config: Config, desired: Desired) -> None:
    rules = desired(base_config).rules
    summary = [(r.family, r.client_set, r.destination_set, r.verdict) for r in rules]
    assert summary == [
        (4, "client_office_v4_addr", "dest_bitbucket_v4", "accept"),
        (4, "client_office_v4_net", "dest_bitbucket_v4", "accept"),
        (4, "client_vpn_v4_addr", "dest_bitbucket_v4", "accept"),
        (4, "client_vpn_v4_net", "dest_bitbucket_v4", "accept"),
        (4, None, "dest_bitbucket_v4", "reject"),
        (6, "client_office_v6_addr", "dest_bitbucket_v6", "accept"),
        (6, "client_office_v6_net", "dest_bitbucket_v6", "accept"),
        (6, "client_vpn_v6_addr", "dest_bitbucket_v6", "accept"),
        (6, "client_vpn_v6_net", "dest_bitbucket_v6", "accept"),
        (6, None, "dest_bitbucket_v6", "reject"),
    ]
    assert {r.counter for r in rules if r.verdict == "accept"} == {"allowed_bitbucket"}
    assert {r.counter for r in rules if r.verdict == "reject"} == {"denied_bitbucket"}
    assert {r.ports for r in rules} == {(22, 443)}
    assert rules[0].comment == "allow office to bitbucket"
    assert rules[4].comment == "refuse others to bitbucket"


def test_rules_narrow_ports_but_deny_covers_all(
    config_dict: dict[str, Any], desired: Desired
) -> None:
    config_dict["rules"] = [{"clients": ["vpn"], "destinations": ["bitbucket"], "ports": [22]}]
    rules = desired(parse_config(config_dict)).rules
    allow = [r for r in rules if r.verdict == "accept"]
    assert {r.client_set for r in allow} == {
        "client_vpn_v4_addr",
        "client_vpn_v4_net",
        "client_vpn_v6_addr",
        "client_vpn_v6_net",
    }
    assert {r.ports for r in allow} == {(22,)}
    assert [r.ports for r in rules if r.verdict == "reject"] == [(22, 443), (22, 443)]


def test_several_destinations_in_name_order(config_dict: dict[str, Any], desired: Desired) -> None:
    config_dict["destinations"]["artifacts"] = {"networks": ["192.0.2.10"], "ports": [8443]}
    state = desired(parse_config(config_dict))
    assert state.counters == (
        "allowed_artifacts",
        "denied_artifacts",
        "allowed_bitbucket",
        "denied_bitbucket",
    )
    order = [(r.destination_set, r.verdict) for r in state.rules if r.verdict == "reject"]
    assert order == [
        ("dest_artifacts_v4", "reject"),
        ("dest_artifacts_v6", "reject"),
        ("dest_bitbucket_v4", "reject"),
        ("dest_bitbucket_v6", "reject"),
    ]
    assert state.sets["dest_artifacts_v4"].elements == {"192.0.2.10"}
    assert state.sets["dest_artifacts_v6"].elements == frozenset()


def test_destination_elements_collapse_addresses_into_networks(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"]["bitbucket"]["networks"] = [
        "104.192.136.0/21",
        "104.192.137.5",  # inside the /21: would overlap it in the interval set
        "104.192.144.0/22",
        "104.192.148.0/22",
        "203.0.113.9",
        "2401:1d80:1010::1",
    ]
    config = parse_config(config_dict)
    elements = destination_elements(config.destinations["bitbucket"].entries)
    assert elements[4] == {"104.192.136.0/21", "104.192.144.0/21", "203.0.113.9"}
    assert elements[6] == {"2401:1d80:1010::1"}


def test_rules_digest_tracks_rule_shape(config_dict: dict[str, Any], desired: Desired) -> None:
    before = desired(parse_config(config_dict)).rules_digest
    config_dict["clients"][0]["addresses"].append("10.9.8.8")  # elements only
    assert desired(parse_config(config_dict)).rules_digest == before
    config_dict["rules"] = [{"clients": ["vpn"], "destinations": ["bitbucket"], "ports": [22]}]
    assert desired(parse_config(config_dict)).rules_digest != before
    assert len(before) == 12


# --- diff ---


def test_diff_from_nothing_creates_everything(base_config: Config, desired: Desired) -> None:
    state = desired(base_config)
    plan = diff(state, None)
    assert plan.create_table
    assert set(plan.add_sets) == set(state.sets)
    assert plan.add_counters == ("allowed_bitbucket", "denied_bitbucket")
    assert plan.add_chains == CHAINS
    assert plan.rewrite_rules
    assert not (plan.delete_sets or plan.delete_chains or plan.flush_chains)
    changes = {change.name: change for change in plan.set_changes}
    assert set(changes) == {name for name, spec in state.sets.items() if spec.elements}
    assert all(not change.delete and not change.replace for change in changes.values())
    assert changes["dest_bitbucket_v4"].add == {"104.192.136.0/21", "185.166.140.0/22"}
    assert plan.elements_added == 8
    assert plan.elements_deleted == 0


def test_diff_from_empty_table_does_not_create_it(base_config: Config, desired: Desired) -> None:
    state = desired(base_config)
    plan = diff(state, KernelTable("repogate", {}, {}, {}))
    assert not plan.create_table
    assert set(plan.add_sets) == set(state.sets)
    assert set(plan.add_chains) == set(CHAINS)
    assert plan.rewrite_rules


def test_diff_against_enforced_table_is_empty(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    plan = diff(state, kernel_from(state, {"allowed_bitbucket": (5, 300)}))
    assert plan == Plan()
    assert plan.is_empty
    assert build_plan(plan, state) == []


def test_one_changed_address_is_one_add_and_one_delete(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    current = kernel_from(desired(parse_config(config_dict)))
    config_dict["clients"][0]["addresses"][1] = "10.9.8.8"
    state = desired(parse_config(config_dict))
    plan = diff(state, current)
    assert plan.set_changes == (
        SetChange("client_office_v4_addr", frozenset({"10.9.8.8"}), frozenset({"10.9.8.7"})),
    )
    assert not plan.rewrite_rules
    assert plan.flush_chains == ()
    assert not (plan.add_sets or plan.delete_sets or plan.add_chains or plan.delete_chains)
    ref = {"family": "inet", "table": "repogate", "name": "client_office_v4_addr"}
    assert build_plan(plan, state) == [
        {"delete": {"element": {**ref, "elem": ["10.9.8.7"]}}},
        {"add": {"element": {**ref, "elem": ["10.9.8.8"]}}},
    ]


def test_added_network_merging_with_a_held_one(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    config_dict["clients"][1]["addresses"] = ["10.30.0.0/25"]
    current = kernel_from(desired(parse_config(config_dict)))
    config_dict["clients"][1]["addresses"] = ["10.30.0.0/25", "10.30.0.128/25"]
    plan = diff(desired(parse_config(config_dict)), current)
    assert plan.set_changes == (
        SetChange("client_vpn_v4_net", frozenset({"10.30.0.0/24"}), frozenset({"10.30.0.0/25"})),
    )


def test_adding_a_group_adds_sets_and_rewrites_rules(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    current = kernel_from(desired(parse_config(config_dict)))
    config_dict["clients"].append({"name": "ci", "type": "static", "addresses": ["10.40.0.1"]})
    state = desired(parse_config(config_dict))
    plan = diff(state, current)
    assert set(plan.add_sets) == {
        "client_ci_v4_addr",
        "client_ci_v4_net",
        "client_ci_v6_addr",
        "client_ci_v6_net",
    }
    assert plan.delete_sets == ()
    assert plan.rewrite_rules
    assert plan.flush_chains == tuple(sorted(CHAINS))
    assert plan.set_changes == (
        SetChange("client_ci_v4_addr", frozenset({"10.40.0.1"}), frozenset()),
    )
    commands = build_plan(plan, state)
    kinds = [next(iter(next(iter(c.values())))) for c in commands]
    first_rule = kinds.index("rule")
    assert all(kind == "rule" for kind in kinds[first_rule:])
    assert kinds.index("set") < kinds.index("element") < first_rule


def test_removing_a_group_deletes_sets_after_flushing_rules(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    current = kernel_from(desired(parse_config(config_dict)))
    del config_dict["clients"][1]
    state = desired(parse_config(config_dict))
    plan = diff(state, current)
    assert plan.delete_sets == tuple(sorted(name for name in GROUP_SETS if "vpn" in name))
    assert plan.rewrite_rules
    assert plan.set_changes == ()
    commands = build_plan(plan, state)
    flush_gate = commands.index(
        {"flush": {"chain": {"family": "inet", "table": "repogate", "name": "gate"}}}
    )
    deletes = [i for i, c in enumerate(commands) if "set" in c.get("delete", {})]
    assert len(deletes) == 4
    assert flush_gate < min(deletes)
    assert not any("vpn" in str(c) for c in commands if "add" in c)


def test_base_chain_with_wrong_hook_is_recreated(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    wrong = dataclasses.replace(current.chains["forward"], hook="input")
    plan = diff(state, with_chains(current, forward=wrong))
    assert plan.delete_chains == ("forward",)
    assert plan.add_chains == ("forward",)
    assert plan.rewrite_rules
    commands = build_plan(plan, state)
    ref = {"family": "inet", "table": "repogate", "name": "forward"}
    order = [
        commands.index({"flush": {"chain": ref}}),
        commands.index({"delete": {"chain": ref}}),
        commands.index(
            {
                "add": {
                    "chain": {
                        **ref,
                        "type": "filter",
                        "hook": "forward",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            }
        ),
    ]
    assert order == sorted(order)


@pytest.mark.parametrize(
    ("field", "value"),
    [("priority", -100), ("policy", "drop"), ("chain_type", "route"), ("hook", None)],
)
def test_chain_matches(field: str, value: object) -> None:
    good = KernelChain("forward", "forward", "filter", 0, "accept", ())
    assert chain_matches(good, "forward")
    assert not chain_matches(good, "output")
    assert not chain_matches(dataclasses.replace(good, **{field: value}), "forward")


def test_gate_chain_with_a_hook_is_recreated(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    hooked = dataclasses.replace(current.chains["gate"], hook="forward", chain_type="filter")
    plan = diff(state, with_chains(current, gate=hooked))
    assert plan.delete_chains == ("gate",)
    assert plan.add_chains == ("gate",)


def test_added_hook_adds_a_base_chain(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    current = kernel_from(desired(parse_config(config_dict)))
    config_dict["agent"]["hooks"] = ["forward", "output"]
    plan = diff(desired(parse_config(config_dict)), current)
    assert plan.add_chains == ("output",)
    assert plan.delete_chains == ()
    assert plan.rewrite_rules
    assert plan.set_changes == ()


def test_removed_hook_deletes_its_chain(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    config_dict["agent"]["hooks"] = ["forward", "output"]
    current = kernel_from(desired(parse_config(config_dict)))
    config_dict["agent"]["hooks"] = ["forward"]
    plan = diff(desired(parse_config(config_dict)), current)
    assert plan.delete_chains == ("output",)
    assert plan.add_chains == ()
    assert plan.rewrite_rules


def test_unknown_objects_in_the_owned_table_are_removed(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    current = with_sets(current, junk=KernelSet("junk", "ipv4_addr", False, frozenset({"1.1.1.1"})))
    current = with_chains(current, extra=KernelChain("extra", None, None, None, None, ("x",)))
    current = dataclasses.replace(
        current, counters={**current.counters, "allowed_old": CounterValue(1, 2)}
    )
    plan = diff(state, current)
    assert plan.delete_sets == ("junk",)
    assert plan.delete_chains == ("extra",)
    assert plan.delete_counters == ("allowed_old",)
    assert "extra" in plan.flush_chains
    assert plan.rewrite_rules
    assert plan.add_sets == plan.add_chains == plan.add_counters == ()


def test_missing_counter_is_added(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    current = dataclasses.replace(current, counters={})
    plan = diff(state, current)
    assert plan.add_counters == ("allowed_bitbucket", "denied_bitbucket")


@pytest.mark.parametrize(
    ("nft_type", "interval"),
    [("ipv6_addr", False), ("ipv4_addr", True), ("ether_addr", False)],
)
def test_set_with_wrong_type_is_recreated(
    base_config: Config, desired: Desired, kernel_from: KernelFrom, nft_type: str, interval: bool
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    wrong = KernelSet("client_office_v4_addr", nft_type, interval, frozenset({"10.9.8.7"}))
    plan = diff(state, with_sets(current, client_office_v4_addr=wrong))
    assert plan.delete_sets == ("client_office_v4_addr",)
    assert plan.add_sets == ("client_office_v4_addr",)
    assert plan.rewrite_rules  # the rules that reference it are flushed first
    assert plan.set_changes == (
        SetChange("client_office_v4_addr", frozenset({"10.9.8.7"}), frozenset()),
    )


def test_drifted_rules_are_rewritten(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    gate = current.chains["gate"]
    drifted = dataclasses.replace(gate, rule_comments=(*gate.rule_comments, None))
    plan = diff(state, with_chains(current, gate=drifted))
    assert plan.rewrite_rules
    assert plan.flush_chains == tuple(sorted(CHAINS))
    assert plan.add_chains == plan.delete_chains == ()


def test_drifted_destination_chain_is_rewritten(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    chain = current.chains["gate_bitbucket_v6"]
    drifted = dataclasses.replace(chain, rule_comments=chain.rule_comments[:-1])  # no refusal
    plan = diff(state, with_chains(current, gate_bitbucket_v6=drifted))
    assert plan.rewrite_rules
    assert plan.add_chains == plan.delete_chains == ()
    missing = diff(state, with_chains(current, gate_bitbucket_v4=None))
    assert missing.add_chains == ("gate_bitbucket_v4",)
    assert missing.rewrite_rules
    hooked = dataclasses.replace(chain, hook="forward", chain_type="filter", priority=0)
    plan = diff(state, with_chains(current, gate_bitbucket_v6=hooked))
    assert plan.delete_chains == plan.add_chains == ("gate_bitbucket_v6",)


def test_a_table_in_the_flat_layout_is_rewritten_in_one_plan(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    """The layout before nft.layout: every rule in `gate`, one plain jump per hook. An
    upgrade adds the destination chains and rewrites the rules; no set or counter moves."""
    state = desired(base_config)
    current = kernel_from(state)
    old = "0123456789ab"  # another digest: the flat layout's rules were fingerprinted alike
    flat = {
        "gate": KernelChain(
            "gate", None, None, None, None, tuple(f"{rule.comment} [{old}]" for rule in state.rules)
        ),
        "forward": dataclasses.replace(
            current.chains["forward"], rule_comments=(f"repogate [{old}]",)
        ),
    }
    plan = diff(state, dataclasses.replace(current, chains=flat))
    assert plan.add_chains == ("gate_bitbucket_v4", "gate_bitbucket_v6")
    assert plan.delete_chains == ()
    assert plan.flush_chains == ("forward", "gate")
    assert plan.rewrite_rules
    assert not (plan.add_sets or plan.delete_sets or plan.set_changes or plan.add_counters)
    commands = build_plan(plan, state)
    kinds = [next(iter(next(iter(c.values())))) for c in commands]
    assert kinds == ["chain"] * 4 + ["rule"] * (len(state.rules) + 2 + 2)


def test_missing_gate_chain_is_added(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    plan = diff(state, with_chains(kernel_from(state), gate=None))
    assert plan.add_chains == ("gate",)
    assert plan.rewrite_rules


def test_elements_added_in_the_kernel_by_hand_are_removed(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    held = current.sets["client_vpn_v4_addr"]
    extra = dataclasses.replace(held, elements=frozenset({"192.0.2.66"}))
    plan = diff(state, with_sets(current, client_vpn_v4_addr=extra))
    assert plan.set_changes == (
        SetChange("client_vpn_v4_addr", frozenset(), frozenset({"192.0.2.66"})),
    )
    assert not plan.rewrite_rules


def test_missing_set_is_created_and_filled(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    plan = diff(state, with_sets(kernel_from(state), client_office_v6_net=None))
    assert plan.add_sets == ("client_office_v6_net",)
    assert plan.delete_sets == ()
    assert plan.set_changes == (
        SetChange("client_office_v6_net", frozenset({"2001:db8:20::/48"}), frozenset()),
    )


# --- interval sets: delete one by one, or flush and refill in the same transaction ---


@pytest.mark.parametrize(
    ("current_size", "desired_size", "deletions", "replace"),
    [
        (1, 0, 1, False),  # a single delete never refills
        (100_000, 1, 1, False),
        (10, 10, 2, False),  # small sets: deleting is always cheaper
        (100_000, 100_000, 5, False),
        (100_000, 100_000, 1_000, True),  # large set, many deletes: refill
        (50_000, 10, 40_000, True),
    ],
)
def test_should_replace_interval(
    current_size: int, desired_size: int, deletions: int, replace: bool
) -> None:
    assert should_replace_interval(current_size, desired_size, deletions) is replace


def test_should_replace_interval_cost_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pin the cost model: 1 us per held element per delete, 10 us per refilled element.
    monkeypatch.setattr(plan_module, "DELETE_COST_PER_SET_ELEMENT", 1.0e-6)
    monkeypatch.setattr(plan_module, "REFILL_COST_PER_ELEMENT", 1.0e-5)
    assert not should_replace_interval(1_000, 1_000, 9)
    assert should_replace_interval(1_000, 1_000, 11)
    assert not should_replace_interval(1_000, 2_000, 19)  # a bigger refill costs more
    assert should_replace_interval(1_000, 2_000, 21)
    assert not should_replace_interval(10**9, 0, 1)  # one delete: never worth a refill
    assert should_replace_interval(10**9, 0, 2)


def _networks(count: int) -> frozenset[str]:
    """`count` disjoint /31 networks in 10.100.0.0/16."""
    first = ipaddress.ip_address("10.100.0.0")
    return frozenset(f"{first + 2 * n}/31" for n in range(count))


def test_large_interval_change_refills_in_one_transaction(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    held = _networks(3_000) | {"10.20.0.0/16"}
    current = with_sets(
        current, client_office_v4_net=KernelSet("client_office_v4_net", "ipv4_addr", True, held)
    )
    plan = diff(state, current)
    (change,) = plan.set_changes
    assert change.replace
    assert change.add == frozenset()  # the true difference; the builder writes back all
    assert len(change.delete) == 3_000
    ref = {"family": "inet", "table": "repogate", "name": "client_office_v4_net"}
    assert build_plan(plan, state) == [
        {"flush": {"set": ref}},
        {"add": {"element": {**ref, "elem": [{"prefix": {"addr": "10.20.0.0", "len": 16}}]}}},
    ]


def test_hash_sets_never_refill(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    state = desired(base_config)
    current = kernel_from(state)
    held = frozenset(f"10.99.{n // 256}.{n % 256}" for n in range(3_000)) | {"10.9.8.7"}
    current = with_sets(
        current, client_office_v4_addr=KernelSet("client_office_v4_addr", "ipv4_addr", False, held)
    )
    (change,) = diff(state, current).set_changes
    assert not change.replace
    assert change.add == frozenset()
    assert len(change.delete) == 3_000


# --- a failed source keeps what the kernel enforces ---


def test_enforced_entries(base_config: Config, desired: Desired, kernel_from: KernelFrom) -> None:
    current = kernel_from(desired(base_config))
    office = enforced_entries(current, "office")
    assert office.addresses_v4 == {"10.9.8.7"}
    assert office.networks_v6 == {"2001:db8:20::/48"}
    assert len(enforced_entries(current, "nobody")) == 0
    assert len(enforced_entries(None, "office")) == 0
