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
