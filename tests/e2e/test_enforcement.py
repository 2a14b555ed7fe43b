"""End to end: repogate in a real gateway namespace, real TCP from client namespaces.

Every assertion is about what a client actually sees on the wire (banner read, reset,
timeout), plus what is left in the gateway's nftables ruleset.
"""

from __future__ import annotations

import json

import pytest

from lab.probe import REFUSED, ProbeResult, format_results
from lab.topology import Lab, TargetRef

pytestmark = pytest.mark.root

PROTECTED: list[TargetRef] = [("bitbucket", 22), ("bitbucket", 443), ("altssh", 443)]
UNRELATED: list[TargetRef] = [("other", 22), ("other", 443), ("other", 80)]
TIMEOUT = 2.0
# A reset comes back in milliseconds; anything near the timeout is not repogate's reset.
FAST = 0.5

BYSTANDERS = """
table inet bystander {
    counter hits { packets 42 bytes 4242 }
    set keep {
        type ipv4_addr
        flags interval
        elements = { 192.0.2.0/24, 10.99.0.7 }
    }
    chain bystander_forward {
        type filter hook forward priority 10; policy accept;
        ip saddr @keep tcp dport 9 counter name "hits" drop
        tcp dport 9 counter packets 7 bytes 700 drop comment "not repogate's"
    }
}
table ip repogate {
    set same_name_other_family { type ipv4_addr; elements = { 192.0.2.1 } }
    chain c {
        ip daddr @same_name_other_family tcp dport 9 drop
    }
}
"""


def listing(lab: Lab, family: str, table: str) -> str:
    """`nft list table`, or a marker when the table is missing (compared, never raised)."""
    proc = lab.nft("list", "table", family, table, check=False)
    return proc.stdout if proc.returncode == 0 else f"<no table {family} {table}>"


def not_connected(results: list[ProbeResult]) -> list[ProbeResult]:
    """The results that did not read the right banner."""
    return [r for r in results if not r.connected]


def not_refused_fast(results: list[ProbeResult]) -> list[ProbeResult]:
    """The results that were not a prompt TCP reset."""
    return [r for r in results if r.result != REFUSED or r.elapsed >= FAST]


def test_approved_clients_reach_bitbucket(enforced: Lab) -> None:
    results = enforced.matrix(["alice", "bob"], PROTECTED, timeout=TIMEOUT)
    # alice: bitbucket 22/443 over v4 and v6, altssh 443; bob (v4 only): three targets.
    assert len(results) == 8, format_results(results)
    assert {r.target.version for r in results if r.client == "alice"} == {4, 6}
    assert not not_connected(results), format_results(not_connected(results))


def test_unapproved_client_is_refused_fast(enforced: Lab) -> None:
    results = enforced.probe("mallory", PROTECTED, timeout=TIMEOUT)
    assert len(results) == 5, format_results(results)
    assert {r.target.version for r in results} == {4, 6}
    assert not not_refused_fast(results), format_results(results)


def test_single_approved_address_is_not_widened(enforced: Lab) -> None:
    # 10.30.0.7 is approved; its neighbour 10.30.0.8, in the same namespace, is not.
    results = enforced.probe("bob", PROTECTED, source="10.30.0.8", timeout=TIMEOUT)
    assert len(results) == 3, format_results(results)
    assert not not_refused_fast(results), format_results(results)


def test_everyone_reaches_unrelated_servers(enforced: Lab) -> None:
    results = enforced.matrix(enforced.spec.vantages(), UNRELATED, timeout=TIMEOUT)
    # alice and mallory: 3 ports x v4/v6; bob and his neighbour address: 3 ports v4.
    assert len(results) == 18, format_results(results)
    assert not not_connected(results), format_results(not_connected(results))


def test_rule_narrows_office_to_ssh_and_reverts(enforced: Lab) -> None:
    rule = {"clients": ["office"], "destinations": ["bitbucket"], "ports": [22]}
    enforced.write_config({"rules": [rule]})
    sync = enforced.repogate("sync")
    assert sync.returncode == 0, sync.stderr

    results = enforced.matrix(["alice", "bob", "mallory"], PROTECTED, timeout=TIMEOUT)
    approved = [r for r in results if r.client in ("alice", "bob")]
    ssh = [r for r in approved if r.target.port == 22]
    https = [r for r in approved if r.target.port == 443]
    assert len(ssh) == 3 and len(https) == 5, format_results(results)
    assert not not_connected(ssh), format_results(ssh)
    assert not not_refused_fast(https), format_results(https)
    mallory = [r for r in results if r.client == "mallory"]
    assert not not_refused_fast(mallory), format_results(mallory)

    # Dropping the rule again must reopen 443 by updating the live table in place.
    enforced.write_config()
    sync = enforced.repogate("sync")
    assert sync.returncode == 0, sync.stderr
    reopened = enforced.probe("alice", [("bitbucket", 443), ("altssh", 443)], timeout=TIMEOUT)
    assert len(reopened) == 3
    assert not not_connected(reopened), format_results(reopened)


def test_status_json_reports_the_live_table(enforced: Lab) -> None:
    status = enforced.repogate("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["table"] == enforced.table
    assert report["present"] is True


def test_bad_config_is_rejected_and_changes_nothing(enforced: Lab) -> None:
    before = listing(enforced, "inet", enforced.table)
    assert before.startswith(f"table inet {enforced.table}"), before
    bad_group = {"name": "office", "type": "static", "addresses": ["10.20.0.0/16", "bogus"]}
    enforced.write_config({"clients": [bad_group]})
    sync = enforced.repogate("sync")
    assert sync.returncode == 2, f"{sync.stdout}\n{sync.stderr}"
    assert sync.stderr.strip(), "a rejected config should say why on stderr"
    assert listing(enforced, "inet", enforced.table) == before
    # Enforcement carries on with the last good ruleset.
    results = enforced.probe("mallory", [("bitbucket", 22)], timeout=TIMEOUT)
    results += enforced.probe("alice", [("bitbucket", 22)], timeout=TIMEOUT)
    assert [r.result for r in results] == ["refused", "refused", "connected", "connected"], (
        format_results(results)
    )


def test_teardown_reopens_bitbucket_and_removes_the_table(enforced: Lab) -> None:
    assert enforced.probe("mallory", [("bitbucket", 22)], timeout=TIMEOUT)[0].result == REFUSED
    teardown = enforced.repogate("teardown")
    assert teardown.returncode == 0, teardown.stderr
    gone = enforced.nft("list", "table", "inet", enforced.table, check=False)
    assert gone.returncode != 0, f"table still there after teardown:\n{gone.stdout}"
    assert f"table inet {enforced.table}" not in enforced.nft("list", "ruleset").stdout
    results = enforced.matrix(enforced.spec.vantages(), PROTECTED, timeout=TIMEOUT)
    assert len(results) == 16, format_results(results)
    assert not not_connected(results), format_results(not_connected(results))


def test_other_tables_are_left_byte_identical(bare_lab: Lab) -> None:
    lab = bare_lab
    rules_file = lab.workdir / "bystanders.nft"
    rules_file.write_text(BYSTANDERS)
    lab.nft("-f", str(rules_file))
    try:
        tables = [("inet", "bystander"), ("ip", lab.table)]

        def snapshot() -> dict[tuple[str, str], str]:
            return {t: listing(lab, *t) for t in tables}

        ruleset_before = lab.nft("list", "ruleset").stdout
        before = snapshot()
        assert "packets 42 bytes 4242" in before[("inet", "bystander")]

        sync = lab.repogate("sync")
        assert sync.returncode == 0, sync.stderr
        assert lab.nft("list", "table", "inet", lab.table, check=False).returncode == 0
        assert snapshot() == before

        # Enforcement works alongside a second forward-hook base chain.
        mallory = lab.probe("mallory", [("bitbucket", 22)], timeout=TIMEOUT)
        assert [r.result for r in mallory] == [REFUSED, REFUSED], format_results(mallory)

        teardown = lab.repogate("teardown")
        assert teardown.returncode == 0, teardown.stderr
        assert snapshot() == before
        assert lab.nft("list", "ruleset").stdout == ruleset_before
    finally:
        for family, name in (("inet", "bystander"), ("ip", lab.table)):
            lab.nft("delete", "table", family, name, check=False)
