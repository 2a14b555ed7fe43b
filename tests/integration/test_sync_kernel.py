"""repogate against the kernel's nftables in a throwaway namespace: minimal, atomic diffs."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import Namespace

BASE = """
[agent]
table = "repogate"
state_dir = "{state_dir}"
{agent_extra}

[destinations.bitbucket]
networks = ["198.51.100.0/24", "2001:db8:bb::/48"]
ports = [22, 443]

[[clients]]
name = "office"
type = "static"
addresses = [{addresses}]
{extra}
"""

OFFICE = '"10.20.0.0/16", "10.30.0.7", "2001:db8:20::/48"'


def config(ns: Namespace, addresses: str = OFFICE, extra: str = "", agent_extra: str = ""):
    return ns.write_config(
        BASE.format(
            addresses=addresses,
            extra=extra,
            agent_extra=agent_extra,
            state_dir=ns.workdir / "state",
        )
    )


def set_elements(ns: Namespace, name: str) -> set[str]:
    listing = json.loads(ns.nft("-j", "list", "set", "inet", "repogate", name))
    for item in listing["nftables"]:
        if "set" in item:
            elements = set()
            for element in item["set"].get("elem", []):
                if isinstance(element, dict) and "prefix" in element:
                    prefix = element["prefix"]
                    elements.add(f"{prefix['addr']}/{prefix['len']}")
                else:
                    elements.add(element)
            return elements
    raise AssertionError(f"set {name} not found")


def test_first_sync_creates_the_table_and_a_second_changes_nothing(netns: Namespace) -> None:
    path = config(netns)
    first = netns.repogate("sync", config=path)
    assert first.returncode == 0, first.stderr
    assert "table inet repogate: create" in first.stdout
    assert set_elements(netns, "client_office_v4_addr") == {"10.30.0.7"}
    assert set_elements(netns, "client_office_v4_net") == {"10.20.0.0/16"}
    assert set_elements(netns, "client_office_v6_net") == {"2001:db8:20::/48"}
    assert set_elements(netns, "dest_bitbucket_v4") == {"198.51.100.0/24"}
    with netns.monitor() as monitor:
        second = netns.repogate("sync", config=path)
    assert second.returncode == 0, second.stderr
    assert "in sync, no changes" in second.stdout
    assert monitor.events() == []


def test_changing_one_address_is_one_delete_and_one_add(netns: Namespace) -> None:
    assert netns.repogate("sync", config=config(netns)).returncode == 0
    changed = config(netns, OFFICE.replace("10.30.0.7", "10.30.0.8"))
    with netns.monitor() as monitor:
        result = netns.repogate("sync", config=changed)
    assert result.returncode == 0, result.stderr
    assert monitor.events() == [
        "delete element inet repogate client_office_v4_addr { 10.30.0.7 }",
        "add element inet repogate client_office_v4_addr { 10.30.0.8 }",
    ]


def test_overlapping_networks_are_collapsed_and_replaced_in_one_transaction(
    netns: Namespace,
) -> None:
    wide = config(netns, '"10.20.0.0/16", "10.21.0.0/16", "10.20.5.0/24"')
    assert netns.repogate("sync", config=wide).returncode == 0
    assert set_elements(netns, "client_office_v4_net") == {"10.20.0.0/15"}
    narrow = config(netns, '"10.20.0.0/16", "10.22.0.0/16"')
    with netns.monitor() as monitor:
        result = netns.repogate("sync", config=narrow)
    assert result.returncode == 0, result.stderr
    assert set_elements(netns, "client_office_v4_net") == {"10.20.0.0/16", "10.22.0.0/16"}
    events = monitor.events()
    assert "delete element inet repogate client_office_v4_net { 10.20.0.0/15 }" in events
    assert not [e for e in events if "table" in e.split()[1:2]], events


def test_other_tables_are_untouched_by_sync_and_teardown(netns: Namespace) -> None:
    netns.run(
        "nft",
        "add table inet bystander; add set inet bystander keep { type ipv4_addr; }; "
        "add element inet bystander keep { 192.0.2.1 }; "
        "add chain inet bystander bychain "
        "{ type filter hook forward priority -10; policy accept; }; "
        "add rule inet bystander bychain ip saddr @keep counter accept",
    )
    netns.run("nft", "add table ip legacy; add chain ip legacy c; add rule ip legacy c accept")
    before = netns.nft("list", "table", "inet", "bystander") + netns.nft(
        "list", "table", "ip", "legacy"
    )
    assert netns.repogate("sync", config=config(netns)).returncode == 0
    changed = config(
        netns, OFFICE.replace("10.30.0.7", "10.30.0.9"), agent_extra='hooks = ["forward", "output"]'
    )
    assert netns.repogate("sync", config=changed).returncode == 0
    teardown = netns.repogate("teardown", config=changed)
    assert teardown.returncode == 0, teardown.stderr
    after = netns.nft("list", "table", "inet", "bystander") + netns.nft(
        "list", "table", "ip", "legacy"
    )
    assert after == before
    assert "repogate" not in netns.nft("list", "tables")


def test_adding_and_removing_a_group_keeps_the_table_and_other_sets(netns: Namespace) -> None:
    assert netns.repogate("sync", config=config(netns)).returncode == 0
    vpn = '\n[[clients]]\nname = "vpn"\ntype = "static"\naddresses = ["10.8.0.0/24"]\n'
    with netns.monitor() as monitor:
        added = netns.repogate("sync", config=config(netns, extra=vpn))
    assert added.returncode == 0, added.stderr
    events = monitor.events()
    assert not any(e.startswith(("delete table", "add table")) for e in events), events
    assert not any(e.startswith("delete set") and "__set" not in e for e in events), events
    assert set_elements(netns, "client_vpn_v4_net") == {"10.8.0.0/24"}
    assert "@client_vpn_v4_net" in netns.nft(
        "list", "chain", "inet", "repogate", "gate_bitbucket_v4"
    )
    removed = netns.repogate("sync", config=config(netns))
    assert removed.returncode == 0, removed.stderr
    assert "client_vpn" not in netns.nft("list", "table", "inet", "repogate")
    assert set_elements(netns, "client_office_v4_addr") == {"10.30.0.7"}


# The layout before nft.layout: every rule in `gate`, looked up for every forwarded packet.
FLAT = """\
flush chain inet repogate forward
flush chain inet repogate gate
flush chain inet repogate gate_bitbucket_v4
flush chain inet repogate gate_bitbucket_v6
delete chain inet repogate gate_bitbucket_v4
delete chain inet repogate gate_bitbucket_v6
"""
FLAT_RULE = (
    "add rule inet repogate gate {match} ip{v} daddr @dest_bitbucket_v{family} "
    'tcp dport {{ 22, 443 }} counter name "{counter}" {verdict} comment "{comment} [0123456789ab]"'
)


def flat_layout(ns: Namespace) -> None:
    lines = [FLAT]
    for family, v in ((4, ""), (6, "6")):
        for kind in ("addr", "net"):
            match = f"ip{v} saddr @client_office_v{family}_{kind}"
            lines.append(
                FLAT_RULE.format(
                    match=match,
                    v=v,
                    family=family,
                    counter="allowed_bitbucket",
                    verdict="accept",
                    comment="allow office to bitbucket",
                )
            )
        lines.append(
            FLAT_RULE.format(
                match="",
                v=v,
                family=family,
                counter="denied_bitbucket",
                verdict="reject with tcp reset",
                comment="refuse others to bitbucket",
            )
        )
    lines.append('add rule inet repogate forward jump gate comment "repogate [0123456789ab]"')
    script = ns.workdir / "flat.nft"
    script.write_text("\n".join(lines) + "\n")
    ns.run("nft", "-f", str(script))


def test_a_table_in_the_flat_layout_is_rewritten_in_one_transaction(netns: Namespace) -> None:
    path = config(netns)
    assert netns.repogate("sync", config=path).returncode == 0
    chains = ("gate_bitbucket_v4", "gate_bitbucket_v6", "gate", "forward")
    enforced = [netns.nft("list", "chain", "inet", "repogate", name) for name in chains]
    flat_layout(netns)
    assert "gate_bitbucket" not in netns.nft("list", "table", "inet", "repogate")
    with netns.monitor() as monitor:
        upgraded = netns.repogate("sync", config=path)
    assert upgraded.returncode == 0, upgraded.stderr
    events = monitor.events()
    assert any(e.startswith("add chain inet repogate gate_bitbucket_v4") for e in events), events
    named = [e for e in events if "__set" not in e]  # anonymous sets: the rules' port lists
    assert not any("element" in e or " set " in e for e in named), events  # no set touched
    commits = [line for line in monitor.output.read_text().splitlines() if "new generation" in line]
    assert len([line for line in commits if not line.endswith("(nft)")]) == 1, (
        commits
    )  # fences: nft
    assert [netns.nft("list", "chain", "inet", "repogate", name) for name in chains] == enforced
    with netns.monitor() as monitor:
        again = netns.repogate("sync", config=path)
    assert "in sync, no changes" in again.stdout, again.stdout
    assert monitor.events() == []


def test_sync_repairs_drift_in_the_owned_table(netns: Namespace) -> None:
    path = config(netns)
    assert netns.repogate("sync", config=path).returncode == 0
    netns.run(
        "nft",
        "delete element inet repogate client_office_v4_addr { 10.30.0.7 }; "
        "add element inet repogate client_office_v4_addr { 10.99.9.9 }; "
        "flush chain inet repogate gate; add set inet repogate intruder { type ipv4_addr; }",
    )
    repaired = netns.repogate("sync", config=path)
    assert repaired.returncode == 0, repaired.stderr
    assert set_elements(netns, "client_office_v4_addr") == {"10.30.0.7"}
    table = netns.nft("list", "table", "inet", "repogate")
    assert "intruder" not in table
    assert "reject with tcp reset" in table
    assert "in sync" in netns.repogate("sync", config=path).stdout


@pytest.mark.parametrize("chain", ["mine", "gate"])
def test_a_table_not_created_by_repogate_is_refused(netns: Namespace, chain: str) -> None:
    # A chain called `gate` proves nothing: ownership is repogate's own mark.
    netns.run("nft", f"add table inet repogate; add chain inet repogate {chain}")
    before = netns.nft("list", "ruleset")
    result = netns.repogate("sync", config=config(netns))
    assert result.returncode == 1
    assert "repogate did not create it (it has no owner mark)" in result.stderr
    assert f"chain {chain}" in result.stderr  # every foreign object is named
    assert netns.repogate("teardown", config=config(netns)).returncode == 1
    assert netns.nft("list", "ruleset") == before
    adopted = netns.repogate("sync", "--adopt", config=config(netns))
    assert adopted.returncode == 0, adopted.stderr
    assert 'comment "repogate instance ' in netns.nft("list", "table", "inet", "repogate")
    assert "in sync" in netns.repogate("sync", config=config(netns)).stdout


def test_an_invalid_config_changes_nothing(netns: Namespace) -> None:
    assert netns.repogate("sync", config=config(netns)).returncode == 0
    before = netns.nft("list", "ruleset")
    bad = config(netns, '"10.20.0.0/16", "10.0.0.999", "0.0.0.0/0"')
    result = netns.repogate("sync", config=bad)
    assert result.returncode == 2
    assert "clients[0].addresses[1]: '10.0.0.999' is not an IP address or network" in result.stderr
    assert "clients[0].addresses[2]: '0.0.0.0/0' is broader than /8" in result.stderr
    assert netns.nft("list", "ruleset") == before


def test_render_is_accepted_by_nft_check(netns: Namespace) -> None:
    path = config(netns, agent_extra='hooks = ["forward", "output"]')
    rendered = netns.repogate("render", config=path)
    assert rendered.returncode == 0, rendered.stderr
    ruleset = netns.workdir / "rendered.nft"
    ruleset.write_text(rendered.stdout)
    check = netns.run("nft", "-c", "-f", str(ruleset), check=False)
    assert check.returncode == 0, check.stderr


def test_output_hook_is_added_and_removed(netns: Namespace) -> None:
    both = config(netns, agent_extra='hooks = ["forward", "output"]')
    assert netns.repogate("sync", config=both).returncode == 0
    assert "hook output" in netns.nft("list", "chain", "inet", "repogate", "output")
    assert netns.repogate("sync", config=config(netns)).returncode == 0
    table = netns.nft("list", "table", "inet", "repogate")
    assert "hook output" not in table
    assert "hook forward" in table


def test_large_interval_change_is_applied_as_one_refill(netns: Namespace) -> None:
    networks = [f'"10.{i // 256}.{i % 256}.0/24"' for i in range(0, 8000, 2)]
    assert netns.repogate("sync", config=config(netns, ", ".join(networks))).returncode == 0
    fewer = [*networks[:-500], '"172.16.0.0/24"']
    result = netns.repogate("sync", config=config(netns, ", ".join(fewer)))
    assert result.returncode == 0, result.stderr
    assert "refill in one transaction" in result.stdout
    held = set_elements(netns, "client_office_v4_net")
    assert len(held) == len(fewer)
    assert "172.16.0.0/24" in held


def test_without_cap_net_admin_the_error_says_so(netns: Namespace) -> None:
    shared = Path(tempfile.mkdtemp(prefix="repogate-test-"))
    try:
        shared.chmod(0o755)
        path = shared / "repogate.toml"
        path.write_text(config(netns).read_text())
        path.chmod(0o644)
        result = netns.repogate("sync", config=path, user="nobody")
    finally:
        shutil.rmtree(shared)
    assert result.returncode == 1, result.stderr
    assert "CAP_NET_ADMIN" in result.stderr
    assert "repogate" not in netns.nft("list", "tables")


def test_status_and_explain_read_the_kernel(netns: Namespace) -> None:
    path = config(netns)
    assert netns.repogate("sync", config=path).returncode == 0
    status = json.loads(netns.repogate("status", "--json", config=path).stdout)
    assert status["present"] is True and status["in_sync"] is True
    assert status["sets"]["client_office_v4_addr"] == 1
    assert status["groups"]["office"] == 3
    assert status["counters"]["bitbucket"]["denied"]["packets"] == 0
    netns.run("nft", "delete element inet repogate client_office_v4_addr { 10.30.0.7 }")
    explained = netns.repogate("explain", "10.30.0.7", config=path).stdout
    assert "NOT in the kernel" in explained
    assert json.loads(netns.repogate("status", "--json", config=path).stdout)["in_sync"] is False


def test_foreign_objects_in_the_owned_table_are_removed(netns: Namespace) -> None:
    path = config(netns)
    assert netns.repogate("sync", config=path).returncode == 0
    netns.run(
        "nft",
        "add map inet repogate sneaky { type ipv4_addr : verdict; }; "
        "add quota inet repogate q { 25 mbytes }",
    )
    repaired = netns.repogate("sync", config=path)
    assert repaired.returncode == 0, repaired.stderr
    assert "delete map sneaky (not created by repogate)" in repaired.stdout
    table = netns.nft("list", "table", "inet", "repogate")
    assert "sneaky" not in table
    assert "quota" not in table
    assert "in sync" in netns.repogate("sync", config=path).stdout


def test_explain_shows_what_the_kernel_still_admits_until_the_next_sync(
    netns: Namespace,
) -> None:
    assert netns.repogate("sync", config=config(netns)).returncode == 0
    revoked = config(netns, OFFICE.replace('"10.30.0.7", ', ""))
    before = netns.repogate("explain", "10.30.0.7", config=revoked).stdout
    assert "is in no client group" in before
    assert "still admitted by the kernel through entry 10.30.0.7 in set client_office_v4_addr" in (
        before
    )
    assert netns.repogate("sync", config=revoked).returncode == 0
    after = netns.repogate("explain", "10.30.0.7", config=revoked).stdout
    assert "still admitted" not in after
    assert "bitbucket: refused on TCP 22, 443" in after
