"""explain ("may this client reach Bitbucket, and why?") and status (what is enforced)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from repogate.cli.explain import explain, format_explanation
from repogate.cli.status import collect_status, format_status
from repogate.config import Config, parse_config
from repogate.model import DesiredState, KernelTable
from repogate.reconcile import gather

Desired = Callable[..., DesiredState]
KernelFrom = Callable[..., KernelTable]


def _explain(config: Config, current: KernelTable | None, address: str) -> list[str]:
    state = gather(config, current).desired
    return format_explanation(explain(config, state, current, address))


# --- explain ---


def test_explain_membership_and_reach(base_config: Config) -> None:
    state = gather(base_config, None).desired
    result = explain(base_config, state, None, "10.20.3.4")
    (membership,) = result.memberships
    assert (membership.group, membership.entry, membership.set_name) == (
        "office",
        "10.20.0.0/16",
        "client_office_v4_net",
    )
    assert membership.in_kernel is None
    (reach,) = result.reaches
    assert (reach.destination, reach.ports, reach.allowed_ports) == (
        "bitbucket",
        (22, 443),
        (22, 443),
    )
    assert reach.via == (membership,)


def test_explain_normalises_the_address(base_config: Config) -> None:
    lines = _explain(base_config, None, "2001:DB8:0:0::5")
    assert lines[0].startswith("2001:db8::5 is in client group 'office' through entry 2001:db8::5 ")


def test_explain_address_in_two_groups(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][1]["addresses"].append("10.20.0.0/24")
    lines = _explain(parse_config(config_dict), None, "10.20.0.9")
    assert [line.split(" through ")[0] for line in lines[:2]] == [
        "10.20.0.9 is in client group 'office'",
        "10.20.0.9 is in client group 'vpn'",
    ]
    assert lines[2] == "  bitbucket: allowed on TCP 22, 443 via office, vpn"


def test_explain_shows_the_listed_entry_of_a_collapsed_network(
    config_dict: dict[str, Any],
) -> None:
    config_dict["clients"][1]["addresses"] = ["10.30.0.0/25", "10.30.0.128/25"]
    lines = _explain(parse_config(config_dict), None, "10.30.0.200")
    assert lines[0] == (
        "10.30.0.200 is in client group 'vpn' through entry 10.30.0.0/24 "
        "(listed as 10.30.0.128/25) in set client_vpn_v4_net: table not present"
    )


def test_explain_partial_ports(config_dict: dict[str, Any]) -> None:
    config_dict["rules"] = [
        {"clients": ["vpn"], "destinations": ["bitbucket"], "ports": [22]},
        {"clients": ["office"], "destinations": ["bitbucket"]},
    ]
    lines = _explain(parse_config(config_dict), None, "10.30.0.1")
    assert lines[1:] == [
        "  bitbucket: allowed on TCP 22 via vpn",
        "  bitbucket: refused on TCP 443 (no rule grants these ports)",
    ]


def test_explain_group_without_a_rule(config_dict: dict[str, Any]) -> None:
    config_dict["rules"] = [{"clients": ["office"], "destinations": ["bitbucket"]}]
    lines = _explain(parse_config(config_dict), None, "10.30.0.1")
    assert lines[0].startswith("10.30.0.1 is in client group 'vpn'")
    assert lines[1] == "  bitbucket: refused on TCP 22, 443 (TCP reset)"


def test_explain_against_the_kernel(
    base_config: Config, desired: Desired, kernel_from: KernelFrom
) -> None:
    current = kernel_from(desired(base_config))
    assert _explain(base_config, current, "10.9.8.7")[0].endswith(": enforced")
    stale = dataclasses.replace(
        current,
        sets={
            **current.sets,
            "client_office_v4_addr": dataclasses.replace(
                current.sets["client_office_v4_addr"], elements=frozenset()
            ),
        },
    )
    assert _explain(base_config, stale, "10.9.8.7")[0].endswith(
        ": NOT in the kernel yet (run `repogate sync`)"
    )


@pytest.mark.parametrize("address", ["10.20.0.0/16", "bitbucket.org", "", "10.0.0.999"])
def test_explain_refuses_non_addresses(base_config: Config, address: str) -> None:
    state = gather(base_config, None).desired
    with pytest.raises(ValueError):
        explain(base_config, state, None, address)


# --- status ---


def test_status_without_table(base_config: Config) -> None:
    status = collect_status(base_config, gather(base_config, None))
    assert not status.present
    assert not status.in_sync
    assert status.pending == {"add": 8, "delete": 0}
    assert format_status(status) == [
        "table inet repogate: not present (run `repogate sync`)",
        "",
        "egress addresses (Bitbucket's IP allowlist must contain these):",
        "  none found",
    ]


def test_status_in_sync(base_config: Config, desired: Desired, kernel_from: KernelFrom) -> None:
    current = kernel_from(
        desired(base_config), {"allowed_bitbucket": (7, 700), "denied_bitbucket": (1, 60)}
    )
    status = collect_status(base_config, gather(base_config, current))
    assert status.present and status.in_sync
    assert {s.name: (s.elements, s.desired) for s in status.sets}["dest_bitbucket_v4"] == (2, 2)
    assert [(g.name, len(g.entries)) for g in status.groups] == [("office", 4), ("vpn", 1)]
    (counter,) = status.counters
    assert (counter.allowed_packets, counter.allowed_bytes) == (7, 700)
    assert (counter.denied_packets, counter.denied_bytes) == (1, 60)
    document = json.loads(json.dumps(status.to_json()))
    assert document["counters"]["bitbucket"]["denied"] == {"packets": 1, "bytes": 60}
    lines = format_status(status)
    assert lines[0] == "table inet repogate: in sync"
    assert "  bitbucket: allowed 7 packets / 700 bytes, denied 1 packets / 60 bytes" in lines


def test_status_lists_sets_the_config_no_longer_wants(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    current = kernel_from(desired(parse_config(config_dict)))
    del config_dict["clients"][1]
    config = parse_config(config_dict)
    status = collect_status(config, gather(config, current))
    assert not status.in_sync
    sets = {s.name: (s.elements, s.desired) for s in status.sets}
    assert sets["client_vpn_v4_net"] == (1, 0)
    assert [g.name for g in status.groups] == ["office"]


def test_status_samples_large_groups(
    config_dict: dict[str, Any], desired: Desired, kernel_from: KernelFrom
) -> None:
    config_dict["clients"][1]["addresses"] = [f"10.30.0.{n}" for n in range(1, 26)]
    config = parse_config(config_dict)
    status = collect_status(config, gather(config, kernel_from(desired(config))))
    line = next(line for line in format_status(status) if line.startswith("  vpn: "))
    assert line.startswith("  vpn: 25 entries: 10.30.0.1 10.30.0.2 10.30.0.3 ")  # numeric order
    assert line.endswith(" … and 15 more")
