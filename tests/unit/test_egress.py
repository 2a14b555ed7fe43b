"""The egress report: what Bitbucket sees, from routes, addresses and NAT (pure)."""

from __future__ import annotations

from typing import Any

from repogate.config import parse_config
from repogate.egress import EgressReport, describe, egress_report
from repogate.model import NatRule
from repogate.nft.parse import parse_nat_rules
from tests.unit.conftest import base_dict

ROUTES = {"198.51.100.1": ("eth0", "192.0.2.10"), "2001:db8:bb::1": ("eth0", "2001:db8:2::10")}
DESTINATIONS = {4: "198.51.100.1", 6: "2001:db8:bb::1"}
ADDRESSES = [("eth0", "192.0.2.10"), ("eth0", "2001:db8:2::10"), ("eth1", "203.0.113.7")]


def config(**egress: Any) -> Any:
    document = base_dict()
    if egress:
        document["egress"] = egress
    return parse_config(document)


def report(cfg: Any, nat: list[NatRule] | None = None) -> EgressReport:
    return egress_report(cfg, DESTINATIONS, ROUTES.get, ADDRESSES, nat or [])


def test_without_nat_bitbucket_sees_the_interface_address() -> None:
    found = report(config())
    assert [(p.family, p.source, p.declared) for p in found.paths] == [
        (4, "192.0.2.10", None),
        (6, "2001:db8:2::10", None),
    ]
    assert describe(found)[0] == (
        "IPv4: 192.0.2.10, the address of eth0 (no NAT on the way out): "
        "Bitbucket's IP allowlist must contain it"
    )


def test_with_snat_bitbucket_sees_the_declared_address_not_the_uplinks() -> None:
    found = report(config(addresses=["203.0.113.7"], snat=True))
    (v4,) = [p for p in found.paths if p.family == 4]
    assert (v4.source, v4.declared) == ("203.0.113.7", True)
    assert v4.how == "SNAT by repogate (egress.snat), out of eth0"
    (v6,) = [p for p in found.paths if p.family == 6]
    assert v6.declared is False  # no IPv6 address declared: IPv6 leaves untranslated
    assert found.declared == {"203.0.113.7": "eth1"}
    assert any("IPv6 traffic to Bitbucket leaves from 2001:db8:2::10" in p for p in found.problems)


def test_another_tables_masquerade_or_snat_is_followed() -> None:
    masquerade = [NatRule("ip nat", "postrouting", "masquerade", None, "eth0", 4)]
    found = report(config(addresses=["192.0.2.10"]), masquerade)
    (v4,) = [p for p in found.paths if p.family == 4]
    assert v4.how == "masquerade in table ip nat chain postrouting, out of eth0" and v4.declared
    snat = [NatRule("ip nat", "postrouting", "snat", "198.18.0.9", None, 4)]
    (v4,) = [p for p in report(config(addresses=["192.0.2.10"]), snat).paths if p.family == 4]
    assert (v4.source, v4.declared) == ("198.18.0.9", False)
    elsewhere = [NatRule("ip nat", "postrouting", "masquerade", None, "wwan0", 4)]
    (v4,) = [p for p in report(config(), elsewhere).paths if p.family == 4]
    assert v4.how.startswith("the address of eth0")  # that rule is for another interface


def test_a_declared_address_gone_from_every_interface_is_a_problem() -> None:
    found = report(config(addresses=["203.0.113.99"], snat=True))
    assert found.declared == {"203.0.113.99": ""}
    assert found.problems[0] == (
        "egress address 203.0.113.99 is on no interface of this host: repogate translates "
        "Bitbucket traffic to it, so replies go nowhere"
    )
    assert EgressReport.from_json(found.to_json()) == found


def test_nat_rules_are_read_from_other_tables_postrouting_chains_only() -> None:
    listing = [
        {
            "chain": {
                "family": "ip",
                "table": "nat",
                "name": "post",
                "type": "nat",
                "hook": "postrouting",
            }
        },
        {
            "chain": {
                "family": "inet",
                "table": "repogate",
                "name": "egress_nat",
                "type": "nat",
                "hook": "postrouting",
            }
        },
        {
            "chain": {
                "family": "ip",
                "table": "nat",
                "name": "pre",
                "type": "nat",
                "hook": "prerouting",
            }
        },
        {
            "rule": {
                "family": "ip",
                "table": "nat",
                "chain": "post",
                "expr": [
                    {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
                    {"masquerade": None},
                ],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "repogate",
                "chain": "egress_nat",
                "expr": [{"snat": {"family": "ip", "addr": "203.0.113.7"}}],
            }
        },
        {
            "rule": {
                "family": "ip",
                "table": "nat",
                "chain": "pre",
                "expr": [{"dnat": {"addr": "10.0.0.1"}}],
            }
        },
    ]
    assert parse_nat_rules(listing, exclude="repogate") == [
        NatRule("ip nat", "post", "masquerade", None, "eth0", 4)
    ]
