"""explain ("may this client reach Bitbucket, and why?") and status (what is enforced)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from repogate.cli.status import format_status
from repogate.config import Config, parse_config
from repogate.explain import explain, format_explanation
from repogate.live import DestinationView, LiveView, SourceView, summary
from repogate.model import DesiredState, KernelTable
from tests.unit.conftest import desired_of

Desired = Callable[..., DesiredState]
KernelFrom = Callable[..., KernelTable]


def _explain(config: Config, current: KernelTable | None, address: str) -> list[str]:
    state = desired_of(config, current)
    return format_explanation(explain(config, state, current, address))


# --- explain ---


def test_explain_membership_and_reach(base_config: Config) -> None:
    state = desired_of(base_config)
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
    state = desired_of(base_config)
    with pytest.raises(ValueError):
        explain(base_config, state, None, address)


# --- status ---


def _view(**changes: Any) -> LiveView:
    base = LiveView(
        table="repogate",
        daemon_pid=4242,
        sources=(
            SourceView(
                "laptops",
                "group laptops",
                "http",
                "held back",
                40,
                held_previous=100,
                held_proposed=40,
                stale_since=1.0e9,
            ),
            SourceView(
                "home",
                "group home",
                "dns",
                "stale",
                2,
                error="timeout",
                last_success=1.0e9,
                expires_at=1.1e9,
            ),
            SourceView(
                "destination:bitbucket:feed",
                "destination bitbucket (feed)",
                "feed",
                "never fetched",
                error="connection refused",
            ),
        ),
        destinations=(DestinationView("bitbucket", 0, (22, 443)),),
        groups={"laptops": 100, "home": 2},
        sets={"client_home_v4_addr": 2},
        in_sync=True,
        started_at=1.0e9,
        config="/etc/repogate/repogate.toml",
    )
    return dataclasses.replace(base, **changes)


def test_status_says_what_the_running_daemon_sees() -> None:
    text = "\n".join(format_status(_view(), {"allowed_bitbucket": [3, 180]}))
    assert "daemon: running (pid 4242" in text
    assert "bitbucket: NOT GATED" in text
    assert "HELD BACK" in text and "from 100 to 40 entries" in text
    assert "`repogate sync --accept-shrink`" in text
    assert "group home: FAILING (timeout); serving its last known good entries" in text
    assert "destination bitbucket (feed): never fetched successfully: connection refused" in text
    assert "(feed) (feed)" not in text
    assert "allowed 3 packets / 180 bytes" in text


def test_status_without_a_daemon_says_so() -> None:
    text = "\n".join(format_status(_view(daemon_pid=None), {}))
    assert "daemon: none runs on this table" in text


def test_summary_puts_not_gated_first() -> None:
    line = summary(_view())
    assert line.startswith("NOT GATED: destination bitbucket")
    assert "held back: laptops" in line and "stale: home" in line
    gated = _view(destinations=(DestinationView("bitbucket", 19, (22, 443)),))
    assert "NOT GATED" not in summary(gated)
