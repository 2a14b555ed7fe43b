"""The lab itself, without repogate: if these fail, enforcement results mean nothing.

They prove the topology forwards everything, the probe tells resets from timeouts, and the
lab cleans up after itself on success, on an exception and on a failed build.
"""

from __future__ import annotations

import tomllib

import pytest

from lab import netns
from lab.config import load_shipped
from lab.errors import LabError
from lab.probe import REFUSED, TIMEOUT, format_results
from lab.topology import Lab

pytestmark = pytest.mark.root


def test_without_repogate_everyone_reaches_everything(bare_lab: Lab) -> None:
    results = bare_lab.matrix(bare_lab.spec.vantages())
    # alice and mallory: 11 targets (v4 and v6); bob and his neighbour address: 6 (v4 only).
    assert len(results) == 34, format_results(results)
    failed = [r for r in results if not r.connected]
    assert not failed, format_results(failed)
    assert {r.banner for r in results if r.target.name == "altssh"} == {
        "repogate-lab altssh 198.51.100.20:443"
    }


def test_probe_classifies_reset_and_silence(bare_lab: Lab) -> None:
    # Nobody listens on 203.0.113.10:8080: the kernel answers with a reset.
    closed = bare_lab.probe("alice", [("203.0.113.10", 8080)])
    assert [r.result for r in closed] == [REFUSED], format_results(closed)
    # A drop inside the `other` namespace turns port 80 silent: a timeout, not a reset.
    table = f"{bare_lab.tag}_silence"
    bare_lab.exec("other", ["nft", "add", "table", "inet", table])
    try:
        chain = "{ type filter hook input priority 0; }"
        bare_lab.exec("other", ["nft", "add", "chain", "inet", table, "in", chain])
        bare_lab.exec("other", ["nft", "add", "rule", "inet", table, "in", "tcp dport 80 drop"])
        silent = bare_lab.probe("alice", [("203.0.113.10", 80)], timeout=0.5)
        assert [r.result for r in silent] == [TIMEOUT], format_results(silent)
        assert silent[0].elapsed >= 0.45
    finally:
        bare_lab.exec("other", ["nft", "delete", "table", "inet", table], check=False)


def test_config_is_derived_from_the_shipped_one(bare_lab: Lab) -> None:
    written = tomllib.loads(bare_lab.config_path.read_text())
    shipped = load_shipped().data
    assert written["agent"]["state_dir"] == str(bare_lab.state_dir)
    assert {k: v for k, v in written["agent"].items() if k != "state_dir"} == {
        k: v for k, v in shipped["agent"].items() if k != "state_dir"
    }
    assert written["destinations"]["bitbucket"]["networks"] == [
        "198.51.100.0/24",
        "2001:db8:bb::/48",
    ]
    assert written["destinations"]["bitbucket"]["ports"] == [22, 443]
    assert written["clients"] == [
        {
            "name": "office",
            "type": "static",
            "addresses": ["10.20.0.0/16", "2001:db8:20::/48", "10.30.0.7"],
        }
    ]
    assert "rules" not in written


def test_cleanup_after_an_exception_leaves_nothing(lab: Lab) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab.create() as other:
        names = [other.ns(role) for role in other.spec.roles()]
        servers = list(other.servers)
        assert set(names) <= set(netns.list_netns())
        raise RuntimeError("boom")
    assert not set(names) & set(netns.list_netns())
    assert all(server.proc.poll() is not None for server in servers)
    assert not other.workdir.exists()
    # The session lab is untouched by its sibling's cleanup.
    assert lab.gw in netns.list_netns()


def test_failed_build_cleans_up(lab: Lab) -> None:
    before = set(netns.lab_netns())
    with pytest.raises(LabError, match="lab server"):
        Lab.create(python="/nonexistent/python3")
    assert set(netns.lab_netns()) == before
