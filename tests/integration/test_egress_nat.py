"""[egress] snat = true against the kernel: a NAT chain in the owned table, and only there."""

from __future__ import annotations

import json

from tests.integration.conftest import Namespace
from tests.integration.test_sync_kernel import config

EGRESS = """
[egress]
addresses = ["203.0.113.7", "2001:db8:7::7"]
snat = {snat}
"""


def chain(ns: Namespace, name: str) -> dict[str, object] | None:
    listing = json.loads(ns.nft("-j", "list", "table", "inet", "repogate"))
    for item in listing["nftables"]:
        if "chain" in item and item["chain"]["name"] == name:
            found: dict[str, object] = item["chain"]
            return found
    return None


def test_snat_adds_a_nat_chain_in_one_transaction_and_removes_it_again(netns: Namespace) -> None:
    assert netns.repogate("sync", config=config(netns)).returncode == 0
    assert chain(netns, "egress_nat") is None
    with_snat = config(netns, extra=EGRESS.format(snat="true"))
    with netns.monitor() as monitor:
        result = netns.repogate("sync", config=with_snat)
    assert result.returncode == 0, result.stderr
    nat = chain(netns, "egress_nat")
    assert nat is not None
    assert (nat["type"], nat["hook"], nat["prio"]) == ("nat", "postrouting", 100)
    text = netns.nft("list", "chain", "inet", "repogate", "egress_nat")
    assert "ip daddr @dest_bitbucket_v4 tcp dport { 22, 443 } snat ip to 203.0.113.7" in text
    assert "ip6 daddr @dest_bitbucket_v6 tcp dport { 22, 443 } snat ip6 to 2001:db8:7::7" in text
    events = monitor.events()
    assert any(e.startswith("add chain inet repogate egress_nat") for e in events), events
    assert not any("element" in e for e in events), events  # no set touched
    again = netns.repogate("sync", config=with_snat)
    assert "in sync, no changes" in again.stdout, again.stdout
    # The rendered boot file loads as it is (nft -c parses it).
    rendered = netns.repogate("render", config=with_snat)
    assert "type nat hook postrouting priority srcnat; policy accept;" in rendered.stdout
    without = config(netns, extra=EGRESS.format(snat="false"))
    assert netns.repogate("sync", config=without).returncode == 0
    assert chain(netns, "egress_nat") is None


def uplink(ns: Namespace) -> None:
    for argv in (
        ["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p"],  # no dummy here
        ["ip", "link", "set", "up0p", "up"],
        ["ip", "link", "set", "up0", "up"],
        ["ip", "address", "add", "192.0.2.10/24", "dev", "up0"],
        ["ip", "route", "add", "198.51.100.0/24", "dev", "up0", "src", "192.0.2.10"],
    ):
        ns.run(*argv)


def egress_paths(ns: Namespace, config_path: object) -> dict[str, object]:
    result = ns.repogate("status", "--json", config=config_path)
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)["egress"]
    return document


def test_the_egress_report_follows_snat_masquerade_or_neither(netns: Namespace) -> None:
    uplink(netns)
    plain = config(netns, extra='[egress]\naddresses = ["203.0.113.7"]\n')
    assert netns.repogate("sync", config=plain).returncode == 0
    report = egress_paths(netns, plain)
    (path,) = [p for p in report["paths"] if p["family"] == 4]  # type: ignore[union-attr]
    assert path["source"] == "192.0.2.10" and path["declared"] is False
    assert "the address of up0 (no NAT on the way out)" in path["how"]
    assert report["declared"] == {"203.0.113.7": ""}
    # Someone else's masquerade on the uplink: the uplink's address, said so.
    netns.nft("add", "table", "ip", "nat")
    netns.nft("add", "chain", "ip", "nat", "post", "{ type nat hook postrouting priority 100; }")
    netns.nft("add", "rule", "ip", "nat", "post", "oifname", "up0", "masquerade")
    (path,) = [p for p in egress_paths(netns, plain)["paths"] if p["family"] == 4]  # type: ignore[index]
    assert path["how"] == "masquerade in table ip nat chain post, out of up0"
    # repogate's own SNAT wins (srcnat in its table is what the flow gets first here).
    netns.run("ip", "address", "add", "203.0.113.7/32", "dev", "up0")
    pinned = config(netns, extra=EGRESS.format(snat="true").replace(', "2001:db8:7::7"', ""))
    assert netns.repogate("sync", config=pinned).returncode == 0
    report = egress_paths(netns, pinned)
    (path,) = [p for p in report["paths"] if p["family"] == 4]  # type: ignore[union-attr]
    assert (path["source"], path["declared"]) == ("203.0.113.7", True)
    assert report["declared"] == {"203.0.113.7": "up0"} and report["problems"] == []
