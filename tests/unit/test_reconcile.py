"""reconcile: a sync against a fake kernel converges in one transaction, from any start."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from repogate import plan as plan_module
from repogate.config import Config, parse_config
from repogate.errors import NftError, NotOwnedTableError
from repogate.model import (
    CounterValue,
    DesiredState,
    KernelChain,
    KernelSet,
    KernelTable,
    Plan,
    SetChange,
)
from repogate.nft.backend import RecordingBackend
from repogate.nft.layout import chain_names, gate_layout
from repogate.report import describe
from tests.unit.conftest import TEST_MARK, engine_for, sync

Desired = Callable[..., DesiredState]
Json = dict[str, Any]
TABLE = {"family": "inet", "table": "repogate"}


def ref(name: str) -> Json:
    return {**TABLE, "name": name}


def _match(protocol: str, field: str, right: object) -> Json:
    left = {"payload": {"protocol": protocol, "field": field}}
    return {"match": {"op": "==", "left": left, "right": right}}


VARIANTS = ("base", "grown", "shrunk", "narrowed", "moved", "renamed")


def _variants(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Configs that differ from `base` in every way the table's shape can change."""
    grown = copy.deepcopy(base)
    grown["clients"].append(
        {"name": "ci", "type": "static", "addresses": ["10.40.0.1", "10.40.1.0/24", "fd00::7"]}
    )
    grown["clients"][0]["addresses"][1] = "10.9.8.8"
    shrunk = copy.deepcopy(base)
    del shrunk["clients"][1]
    shrunk["agent"]["hooks"] = ["forward", "output"]
    narrowed = copy.deepcopy(base)
    narrowed["destinations"]["mirror"] = {
        "networks": ["192.0.2.0/25", "192.0.2.200"],
        "ports": [443],
    }
    narrowed["rules"] = [
        {"clients": ["vpn"], "destinations": ["bitbucket"], "ports": [22]},
        {"clients": ["office"], "destinations": ["bitbucket", "mirror"]},
    ]
    moved = copy.deepcopy(base)
    moved["destinations"]["bitbucket"]["networks"] = [
        "104.192.136.0/22",  # was a /21: shrinks
        "185.166.140.0/22",
        "185.166.144.0/22",  # a new neighbour that does not merge (not siblings)
        "2401:1d80:1003::/48",
    ]
    moved["clients"][1]["addresses"] = ["10.30.0.0/25", "10.30.0.128/25", "10.30.1.0/24"]
    renamed = copy.deepcopy(base)
    renamed["clients"][0]["name"] = "hq"
    renamed["agent"]["hooks"] = ["output"]
    return {
        "base": base,
        "grown": grown,
        "shrunk": shrunk,
        "narrowed": narrowed,
        "moved": moved,
        "renamed": renamed,
    }


@pytest.fixture
def variants(config_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return _variants(config_dict)


def assert_enforced(kernel: Any, state: DesiredState) -> None:
    """The fake kernel holds exactly the desired table."""
    held = kernel.tables[state.table]
    assert set(held["sets"]) == set(state.sets)
    for name, spec in state.sets.items():
        assert held["sets"][name]["elems"] == set(spec.elements), name
        assert held["sets"][name]["interval"] == spec.interval
    assert set(held["counters"]) == {*state.counters, "repogate_owner"}
    assert held["counters"]["repogate_owner"][2] == state.owner  # the owner mark
    layout = gate_layout(state.rules)
    assert set(held["chains"]) == set(chain_names(state))
    assert sum(len(held["chains"][c.name]["rules"]) for c in layout.destinations) == len(
        state.rules
    )
    assert len(held["chains"]["gate"]["rules"]) == len(layout.destinations)
    for hook in state.hooks:
        assert held["chains"][hook]["base"]["hook"] == hook
        jumps = [rule["expr"][-1] for rule in held["chains"][hook]["rules"]]
        assert jumps == [{"jump": {"target": "gate"}}] * len(layout.hook_ports)


def test_first_sync_creates_the_table_in_one_transaction(base_config: Config, kernel: Any) -> None:
    result = sync(base_config, kernel)
    assert result.applied
    assert result.plan.create_table
    assert len(kernel.transactions) == 1
    assert_enforced(kernel, result.desired)


def test_second_sync_changes_nothing(base_config: Config, kernel: Any) -> None:
    sync(base_config, kernel)
    again = sync(base_config, kernel)
    assert again.plan.is_empty
    assert not again.applied
    assert again.commands == []
    assert len(kernel.transactions) == 1


@pytest.mark.parametrize(("start", "end"), list(itertools.permutations(VARIANTS, 2)))
def test_any_config_change_converges(
    start: str, end: str, kernel: Any, variants: dict[str, dict[str, Any]]
) -> None:
    sync(parse_config(variants[start]), kernel)
    config = parse_config(variants[end])
    result = sync(config, kernel)  # the fake kernel refuses invalid transactions
    assert result.applied
    assert_enforced(kernel, result.desired)
    assert sync(config, kernel).plan.is_empty


def test_counters_survive_element_changes(config_dict: dict[str, Any], kernel: Any) -> None:
    sync(parse_config(config_dict), kernel)
    kernel.set_counter("repogate", "allowed_bitbucket", 42, 4200)
    config_dict["clients"][0]["addresses"].append("10.9.8.9")
    result = sync(parse_config(config_dict), kernel)
    assert not result.plan.rewrite_rules
    assert kernel.read_table("repogate").counters["allowed_bitbucket"] == CounterValue(42, 4200)


def test_refill_path_converges(
    config_dict: dict[str, Any], kernel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dict["clients"][1]["addresses"] = [f"10.30.{n}.0/24" for n in range(0, 40, 2)]
    sync(parse_config(config_dict), kernel)
    monkeypatch.setattr(plan_module, "DELETE_COST_PER_SET_ELEMENT", 1.0)  # always refill
    config_dict["clients"][1]["addresses"] = [f"10.30.{n}.0/24" for n in range(20, 60, 2)]
    config = parse_config(config_dict)
    result = sync(config, kernel)
    (change,) = result.plan.set_changes
    assert change.replace
    assert {"flush": {"set": ref("client_vpn_v4_net")}} in result.commands
    assert_enforced(kernel, result.desired)
    assert sync(config, kernel).plan.is_empty


def test_junk_in_the_owned_table_is_removed(base_config: Config, kernel: Any) -> None:
    sync(base_config, kernel)
    kernel.apply(
        [
            {"add": {"set": {**ref("junk"), "type": "ipv4_addr"}}},
            {"add": {"element": {**ref("junk"), "elem": ["1.1.1.1"]}}},
            {"add": {"counter": ref("allowed_old")}},
            {"add": {"chain": ref("extra")}},
            {
                "add": {
                    "rule": {
                        **TABLE,
                        "chain": "extra",
                        "expr": [
                            _match("ip", "saddr", "@junk"),
                            {"counter": "allowed_old"},
                            {"accept": None},
                        ],
                    }
                }
            },
            {"add": {"rule": {**TABLE, "chain": "gate", "expr": [{"jump": {"target": "extra"}}]}}},
        ]
    )
    result = sync(base_config, kernel)
    assert result.plan.delete_sets == ("junk",)
    assert result.plan.delete_chains == ("extra",)
    assert result.plan.delete_counters == ("allowed_old",)
    assert_enforced(kernel, result.desired)
    assert sync(base_config, kernel).plan.is_empty


def test_wrong_hook_and_wrong_set_type_are_repaired(base_config: Config, kernel: Any) -> None:
    kernel.apply(
        [
            {"add": {"table": {"family": "inet", "name": "repogate"}}},
            {"add": {"counter": {**ref("repogate_owner"), "comment": TEST_MARK}}},
            {"add": {"set": {**ref("client_office_v4_addr"), "type": "ipv6_addr"}}},
            {"add": {"chain": ref("gate")}},
            {
                "add": {
                    "chain": {
                        **ref("forward"),
                        "type": "filter",
                        "hook": "input",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            },
            {
                "add": {
                    "rule": {
                        **TABLE,
                        "chain": "gate",
                        "expr": [
                            _match("ip6", "saddr", "@client_office_v4_addr"),
                            {"accept": None},
                        ],
                    }
                }
            },
            {
                "add": {
                    "rule": {**TABLE, "chain": "forward", "expr": [{"jump": {"target": "gate"}}]}
                }
            },
        ]
    )
    result = sync(base_config, kernel)
    assert "client_office_v4_addr" in result.plan.delete_sets
    assert result.plan.delete_chains == ("forward",)
    assert_enforced(kernel, result.desired)
    assert kernel.tables["repogate"]["sets"]["client_office_v4_addr"]["type"] == "ipv4_addr"
    assert sync(base_config, kernel).plan.is_empty


def test_range_element_added_by_hand_is_removed(base_config: Config, kernel: Any) -> None:
    sync(base_config, kernel)
    kernel.apply(
        [
            {
                "add": {
                    "element": {
                        **ref("client_office_v4_net"),
                        "elem": [{"range": ["10.21.0.1", "10.21.0.5"]}],
                    }
                }
            }
        ]
    )
    result = sync(base_config, kernel)
    assert result.applied
    assert kernel.elements("repogate", "client_office_v4_net") == {"10.20.0.0/16"}


def test_range_element_is_seen_as_drift(base_config: Config, kernel: Any) -> None:
    sync(base_config, kernel)
    range_element = {"range": ["10.21.0.1", "10.21.0.5"]}
    kernel.apply([{"add": {"element": {**ref("client_office_v4_net"), "elem": [range_element]}}}])
    result = sync(base_config, kernel, dry_run=True)
    (change,) = result.plan.set_changes
    assert change.delete == {"10.21.0.1-10.21.0.5"}


def test_dry_run_changes_nothing(base_config: Config, kernel: Any) -> None:
    result = sync(base_config, kernel, dry_run=True)
    assert not result.applied
    assert result.commands
    assert kernel.transactions == []
    assert kernel.read_table("repogate") is None


def test_recording_backend_records_one_transaction(base_config: Config) -> None:
    backend = RecordingBackend()
    result = sync(base_config, backend)
    assert backend.transactions == [result.commands]
    sync(base_config, backend, dry_run=True)
    assert len(backend.transactions) == 1


def test_failed_transaction_leaves_the_kernel_unchanged(base_config: Config, kernel: Any) -> None:
    sync(base_config, kernel)
    before = copy.deepcopy(kernel.tables)
    with pytest.raises(NftError):
        kernel.apply(
            [
                {"add": {"element": {**ref("client_vpn_v4_addr"), "elem": ["10.0.0.1"]}}},
                {"delete": {"set": ref("does_not_exist")}},
            ]
        )
    assert kernel.tables == before


# --- ownership ---


def _table(**chains: KernelChain) -> KernelTable:
    return KernelTable("repogate", {}, dict(chains), {})


def test_ownership_is_proven_by_the_mark_never_by_a_chain_name() -> None:
    engine = engine_for(object())
    engine.check_owned(None)
    engine.check_owned(_table())  # an empty table: nothing to lose
    # A foreign table with a chain called `gate` is not adopted: anyone can make one.
    gate_only = _table(gate=KernelChain("gate", None, None, None, None, ()))
    with pytest.raises(NotOwnedTableError, match=r"no owner mark.*chain gate"):
        engine.check_owned(gate_only)
    with pytest.raises(NotOwnedTableError, match="chain input"):
        engine.check_owned(_table(input=KernelChain("input", "input", "filter", 0, "drop", ())))
    sets_only = KernelTable(
        "repogate", {"s": KernelSet("s", "ipv4_addr", False, frozenset())}, {}, {}
    )
    with pytest.raises(NotOwnedTableError, match="set s"):
        engine.check_owned(sets_only)
    ours = dataclasses.replace(gate_only, owner=engine.owner_mark)
    engine.check_owned(ours)
    other = dataclasses.replace(gate_only, owner="repogate instance 0123456789abcdef")
    with pytest.raises(NotOwnedTableError, match="another repogate instance"):
        engine.check_owned(other)
    # --adopt takes it over, naming what was there.
    assert engine.check_owned(gate_only, adopt=True) == ("chain gate",)


def test_adopt_takes_a_foreign_table_over_and_marks_it(base_config: Config) -> None:
    foreign = _table(gate=KernelChain("gate", None, None, None, None, ()))
    backend = RecordingBackend(table=foreign)
    result = sync(base_config, backend, adopt=True)
    assert result.applied
    owner = [c for c in backend.transactions[0] if "counter" in c.get("add", {})]
    assert any(c["add"]["counter"].get("comment") == engine_for(backend).owner_mark for c in owner)


def test_sync_refuses_a_foreign_table(base_config: Config) -> None:
    foreign = _table(input=KernelChain("input", "input", "filter", 0, "drop", ()))
    backend = RecordingBackend(table=foreign)
    with pytest.raises(NotOwnedTableError):
        sync(base_config, backend)
    assert backend.transactions == []


# --- describe ---


def test_describe_in_sync() -> None:
    assert describe(Plan(), "repogate") == ["table inet repogate: in sync, no changes"]


def test_describe_first_sync(base_config: Config) -> None:
    lines = describe(sync(base_config, RecordingBackend()).plan, "repogate")
    assert lines[0] == "table inet repogate: create"
    assert "create set client_office_v4_addr" in lines
    assert "create counter allowed_bitbucket" in lines
    assert "create chain gate" in lines
    assert "rules: rewrite" in lines
    assert "set dest_bitbucket_v4: +2 [+104.192.136.0/21 +185.166.140.0/22]" in lines


def test_describe_samples_large_changes(config_dict: dict[str, Any], kernel: Any) -> None:
    sync(parse_config(config_dict), kernel)
    config_dict["clients"][1]["addresses"] = [f"10.30.1.{n}" for n in range(1, 9)]
    lines = describe(sync(parse_config(config_dict), kernel).plan, "repogate")
    sample = "+10.30.1.1 +10.30.1.2 +10.30.1.3 +10.30.1.4 +10.30.1.5 … 3 more"
    assert f"set client_vpn_v4_addr: +8 [{sample}]" in lines
    assert "set client_vpn_v4_net: -1 [-10.30.0.0/24]" in lines


def test_describe_marks_refills() -> None:
    plan = Plan(
        set_changes=(
            SetChange(
                "client_a_v4_net",
                frozenset({"10.1.0.0/16"}),
                frozenset({"10.2.0.0/16", "10.3.0.0/16"}),
                replace=True,
            ),
        )
    )
    assert describe(plan, "t") == [
        "set client_a_v4_net: +1 [+10.1.0.0/16]; -2 [-10.2.0.0/16 -10.3.0.0/16] "
        "(refill in one transaction)"
    ]
