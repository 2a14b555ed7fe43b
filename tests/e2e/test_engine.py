"""End to end: the findings of the engine issue, each as the admin would meet it.

Prompt stops whatever the sources are doing, one daemon per table, `status` and
`explain` from the running daemon, a first start without network, a bad state
file, a CLI sync after a rename, and reloads racing refreshes. The daemon runs
in the lab's gateway exactly as in tests/e2e/test_daemon.py (same fixtures).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from lab import netns
from lab.config import office_group
from lab.topology import Lab
from repogate.state import write_atomically
from tests.e2e.test_daemon import (
    BOB,
    BOB_NEIGHBOUR,
    OFFICE_WITHOUT_BOB,
    SSH_HTTPS,
    StartDaemon,
    check_enforcing,
    configure,
    wait_until,
)

pytestmark = pytest.mark.root

STOP_WITHIN = 5.0  # seconds from SIGTERM to exit, whatever the sources do
STOP_ROUNDS = 3  # make test; the fault suite repeats it 50 times

SILENT_TCP = """
import socket, sys, time
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(64)
held = []
while True:
    held.append(server.accept()[0])  # accept, never answer
"""
SILENT_UDP = """
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    server.recv(4096)  # a DNS server that never answers
"""


@pytest.fixture
def silent_servers(daemon_lab: Lab) -> Iterator[tuple[int, int]]:
    """A TCP server that accepts and never answers, and a DNS port that never answers,
    on the gateway's loopback; killed afterwards."""
    tcp_port, udp_port = 18080, 18053
    procs = [
        subprocess.Popen(netns.in_netns(daemon_lab.gw, [daemon_lab.python, "-c", code, str(port)]))
        for code, port in ((SILENT_TCP, tcp_port), (SILENT_UDP, udp_port))
    ]
    time.sleep(0.3)
    try:
        yield tcp_port, udp_port
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def stuck_sources(tcp_port: int, udp_port: int) -> dict[str, object]:
    """A config whose network sources all hang: an HTTP list and dynamic DNS names."""
    return {
        "resolver": {"nameservers": ["127.0.0.1"], "port": udp_port, "timeout": "20s"},
        "clients": [
            office_group([*OFFICE_WITHOUT_BOB, BOB]),
            {
                "name": "laptops",
                "type": "http",
                "url": f"http://127.0.0.1:{tcp_port}/list",
                "allow_insecure": True,
                "timeout": "60s",
                "interval": "1s",
            },
            {"name": "home", "type": "dns", "names": ["alice.dyn.example"], "min_refresh": "1s"},
        ],
    }


def test_sigterm_stops_promptly_while_every_source_hangs(
    daemon_lab: Lab, start_daemon: StartDaemon, silent_servers: tuple[int, int]
) -> None:
    lab = daemon_lab
    configure(lab, stuck_sources(*silent_servers))
    for round_ in range(STOP_ROUNDS):
        daemon = start_daemon()
        daemon.wait_ready()
        time.sleep(1.5)  # the refresh jobs are now waiting on servers that never answer
        started = time.monotonic()
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit(timeout=STOP_WITHIN + 5) == 0, daemon.context()
        took = time.monotonic() - started
        assert took < STOP_WITHIN, f"round {round_}: stop took {took:.1f}s\n{daemon.context()}"
        # The final state and the boot ruleset were written on the way out.
        assert (lab.state_dir / "state.json").exists(), daemon.context()
        assert "table inet repogate" in (lab.state_dir / "ruleset.nft").read_text()
        assert "stays in force" in daemon.log(), daemon.context()


def test_a_second_daemon_on_the_same_table_refuses_to_start(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    first = start_daemon()
    first.wait_ready()
    second = start_daemon()
    assert second.wait_exit(timeout=10) == 1, second.context()
    assert "already manages table inet repogate" in second.log(), second.context()
    assert first.running(), first.context()
    # `repogate sync` does not race the daemon: it asks it.
    result = lab.repogate("sync")
    assert result.returncode == 0, result.stderr
    assert "a daemon runs on table inet repogate" in result.stdout
    assert "in sync, no changes" in result.stdout
    problems = check_enforcing(lab, targets=SSH_HTTPS)
    assert not problems, "\n".join(problems) + "\n" + first.context()


def test_a_foreign_table_with_a_gate_chain_is_refused_by_the_daemon(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    lab.nft("add", "table", "inet", lab.table)
    lab.nft("add", "chain", "inet", lab.table, "gate")
    before = lab.nft("list", "ruleset").stdout
    daemon = start_daemon()
    assert daemon.wait_exit(timeout=10) == 1, daemon.context()
    assert "repogate did not create it (it has no owner mark)" in daemon.log()
    assert "chain gate" in daemon.log()
    assert lab.nft("list", "ruleset").stdout == before  # nothing touched
    lab.nft("delete", "table", "inet", lab.table)


def test_a_state_file_that_is_not_utf8_is_set_aside(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    (lab.state_dir / "state.json").write_bytes(b'{"version": 2, "groups": \xff\xfe\x00}')
    daemon = start_daemon()
    daemon.wait_ready()
    aside = list(lab.state_dir.glob("state.json.corrupt-*"))
    assert len(aside) == 1, daemon.context()
    assert aside[0].name in daemon.log(), daemon.context()
    problems = check_enforcing(lab, targets=SSH_HTTPS)
    assert not problems, "\n".join(problems) + "\n" + daemon.context()


def test_status_and_explain_see_the_running_daemon(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    laptops = lab.workdir / "laptops.txt"
    many = [BOB, BOB_NEIGHBOUR, *(f"10.40.0.{i}" for i in range(1, 9))]
    write_atomically(laptops, "\n".join(many) + "\n")
    configure(
        lab,
        {
            "clients": [
                office_group(OFFICE_WITHOUT_BOB),
                # A long interval: the hold below lasts until the next refresh agrees.
                {"name": "laptops", "type": "file", "path": str(laptops), "interval": "60s"},
                {
                    "name": "mdm",
                    "type": "http",
                    "url": "http://127.0.0.1:1/export",  # nothing listens: never fetched
                    "allow_insecure": True,
                    "interval": "1s",
                },
            ],
            # A destination whose only host never resolves: NOT GATED, and said so.
            "resolver": {"nameservers": ["127.0.0.1"], "port": 1, "timeout": "0.2s"},
            "destinations": {"mirror": {"hosts": ["mirror.invalid.example"], "ports": [22]}},
        },
    )
    first = start_daemon()
    ready = first.wait_ready()
    assert "NOT GATED: destination mirror" in ready.fields.get("STATUS", ""), first.context()
    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0, first.context()
    write_atomically(laptops, f"{BOB_NEIGHBOUR}\n")  # a shrink by 90 %: held back at start
    daemon = start_daemon()
    daemon.wait_ready()
    wait_until(lambda: "group mdm: never" in lab.repogate("status").stdout, 5.0)
    text = lab.repogate("status").stdout
    assert "daemon: running (pid" in text, text
    assert "group laptops: HELD BACK" in text and "from 10 to 1 entries" in text, text
    assert "group mdm: never fetched successfully" in text, text
    assert "mirror: NOT GATED" in text, text
    document = json.loads(lab.repogate("status", "--json").stdout)
    assert document["not_gated"] == ["mirror"]
    assert document["daemon_pid"] > 0
    # explain's advice is true during a hold: only --accept-shrink applies it.
    explained = lab.repogate("explain", BOB).stdout
    assert "HELD BACK" in explained and "--accept-shrink" in explained, explained
    problems = check_enforcing(lab, allowed=[("bob", BOB)], targets=SSH_HTTPS, refused=[])
    assert not problems, "\n".join(problems) + "\n" + daemon.context()
    accepted = lab.repogate("sync", "--accept-shrink")
    assert "asking it" in accepted.stdout, accepted.stdout + accepted.stderr
    problems = check_enforcing(
        lab, allowed=[("bob", BOB_NEIGHBOUR)], refused=[("bob", BOB)], targets=SSH_HTTPS
    )
    assert not problems, "\n".join(problems) + "\n" + daemon.context()


def test_a_first_start_without_network_gates_bitbucket_with_the_snapshot(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    configure(
        lab,
        {
            "resolver": {"nameservers": ["127.0.0.1"], "port": 1, "timeout": "0.2s"},
            "destinations": {
                "bitbucket": {"preset": "bitbucket", "feed_url": "https://127.0.0.1:1/"}
            },
        },
    )
    daemon = start_daemon()
    ready = daemon.wait_ready()
    status = ready.fields.get("STATUS", "")
    assert "NOT GATED" not in status, daemon.context()
    elements = lab.nft("list", "set", "inet", lab.table, "dest_bitbucket_v4").stdout
    assert "104.192.136.0/21" in elements, elements
    text = lab.repogate("status").stdout
    assert "bitbucket: gated" in text, text
    assert "snapshot 2026-10-09" in text, text


def test_a_cli_sync_after_a_table_rename_leaves_one_table(daemon_lab: Lab) -> None:
    lab = daemon_lab
    assert lab.repogate("sync").returncode == 0
    configure(lab, {"agent": {"table": "gate3"}})
    try:
        result = lab.repogate("sync")
        assert result.returncode == 0, result.stderr
        listed = lab.nft("list", "tables", "inet").stdout.split()
        assert {w for w in listed if w not in ("table", "inet")} == {"gate3"}, listed
    finally:
        lab.nft("delete", "table", "inet", "gate3", check=False)
        configure(lab)


def test_reloads_racing_refreshes_never_break_the_daemon(
    daemon_lab: Lab, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    laptops = lab.workdir / "laptops.txt"
    write_atomically(laptops, f"{BOB}\n")
    group = {"name": "laptops", "type": "file", "path": str(laptops), "interval": "1s"}
    other = {"name": "other", "type": "file", "path": str(laptops), "interval": "1s"}
    configs = [
        {"clients": [office_group(OFFICE_WITHOUT_BOB), group]},
        {"clients": [office_group(OFFICE_WITHOUT_BOB), other]},
    ]
    configure(lab, configs[0])
    daemon = start_daemon()
    daemon.wait_ready()
    for index in range(20):  # sources come and go while their refreshes run
        configure(lab, configs[index % 2])
        write_atomically(laptops, f"{BOB if index % 3 else BOB_NEIGHBOUR}\n")
        daemon.send(signal.SIGHUP)
        time.sleep(0.1)
    write_atomically(laptops, f"{BOB}\n")
    daemon.reload()
    assert daemon.running(), daemon.context()
    assert "Traceback" not in daemon.log() and "KeyError" not in daemon.log(), daemon.context()
    converged = wait_until(
        lambda: (
            not check_enforcing(
                lab, allowed=[("bob", BOB)], refused=[("bob", BOB_NEIGHBOUR)], targets=SSH_HTTPS
            )
        ),
        6.0,
    )
    assert converged is not None, daemon.context()
