"""End to end: egress pinning and git-aware probes against a real sshd and a real
git-over-HTTPS server (nginx, fcgiwrap, git http-backend) standing in for Bitbucket.

The server side answers like Bitbucket with a workspace IP allowlist: 403 "not on
this workspace's IP allowlist" to any source but the declared egress address, 401
to a wrong repository token. With `[egress] snat = true` the daemon translates
admitted flows, so a developer's clone through the gateway arrives from the egress
address only. The probes run from the gateway itself and tell each failure apart:
a changed SSH host key, a refused token, the allowlist refusing us.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import netns
from lab.config import office_group
from lab.githttp import GitHttpsProcess, start_git_https
from lab.sshd import SshdProcess, start_sshd
from lab.topology import Lab
from repogate.state import write_atomically
from tests.e2e.test_daemon import OFFICE_WITHOUT_BOB, StartDaemon, scrape_metrics, wait_until
from tests.e2e.test_daemon import configure as configure_lab

pytestmark = pytest.mark.root

EGRESS = "198.51.100.77"  # what the workspace's allowlist holds; on the gateway's uplink
SSH, ALTSSH, HTTPS = "198.51.100.30", "198.51.100.31", "198.51.100.40"
TOKEN = "ATCTT3xFfGN0-lab-repository-token"


@dataclass
class Bitbucket:
    sshd: SshdProcess
    git: GitHttpsProcess
    known_hosts: Path
    token_file: Path
    uplink: str  # the gateway's interface towards Bitbucket


@pytest.fixture
def bitbucket(daemon_lab: Lab, tmp_path: Path) -> Iterator[Bitbucket]:
    lab = daemon_lab
    uplink, server_if = lab._ifnames("bitb")
    server = lab.ns("bitbucket")
    for address in (SSH, ALTSSH, HTTPS):
        netns.add_address(server, server_if, f"{address}/24")
    netns.add_address(lab.gw, uplink, f"{EGRESS}/32")
    sshd = start_sshd(server, tmp_path / "sshd", [(SSH, 22), (ALTSSH, 443)])
    try:
        git = start_git_https(
            server,
            tmp_path / "git",
            (HTTPS, 443),
            token=TOKEN,
            allowed_sources=[EGRESS],
            server_names=["bitbucket.lab"],
        )
        try:
            known_hosts = lab.workdir / "bitbucket_known_hosts"
            write_atomically(known_hosts, sshd.known_hosts([SSH, f"[{ALTSSH}]:443"]))
            token_file = lab.workdir / "probe.token"
            write_atomically(token_file, TOKEN + "\n")
            yield Bitbucket(sshd, git, known_hosts, token_file, uplink)
        finally:
            git.stop()
    finally:
        sshd.stop()
        for address in (SSH, ALTSSH, HTTPS):
            netns.run(
                ["ip", "-n", server, "address", "del", f"{address}/24", "dev", server_if],
                check=False,
            )
        netns.run(
            ["ip", "-n", lab.gw, "address", "del", f"{EGRESS}/32", "dev", uplink], check=False
        )
        configure_lab(lab)


def probe(lab: Lab, *names: str) -> tuple[int, str]:
    result = lab.repogate("probe", *names, check=False)
    return result.returncode, result.stdout + result.stderr


def test_snat_pins_clones_to_the_egress_address_and_probes_tell_failures_apart(
    daemon_lab: Lab, start_daemon: StartDaemon, bitbucket: Bitbucket
) -> None:
    lab = daemon_lab
    configure_lab(
        lab,
        {
            "egress": {"addresses": [EGRESS], "snat": True},
            "probes": [
                {
                    "name": "ssh",
                    "type": "ssh",
                    "target": f"{SSH}:22",
                    "known_hosts": str(bitbucket.known_hosts),
                    "interval": "1h",  # only the explicit runs below change their results
                },
                {
                    "name": "altssh",
                    "type": "ssh",
                    "target": f"{ALTSSH}:443",
                    "known_hosts": str(bitbucket.known_hosts),
                    "interval": "1h",  # only the explicit runs below change their results
                },
                {
                    "name": "https",
                    "type": "git-https",
                    "url": bitbucket.git.url(),
                    "token_file": str(bitbucket.token_file),
                    "ca_file": str(bitbucket.git.ca_file),
                    "interval": "5s",
                },
            ],
            "clients": [office_group(OFFICE_WITHOUT_BOB)],
        },
    )
    daemon = start_daemon()
    daemon.wait_ready()

    def first_runs_done() -> bool:
        return len(json.loads(lab.repogate("status", "--json").stdout)["probes"]) == 3

    # The daemon's own first runs (a second after start) must be over before the faults
    # below, or one of them could land after the host-key rotation.
    assert wait_until(first_runs_done, 30.0, step=0.5) is not None, daemon.context()

    # A developer on an approved address clones through the gateway: the server sees
    # only the egress address, which its allowlist holds.
    env = {**os.environ, "GIT_SSL_CAINFO": str(bitbucket.git.ca_file), "GIT_TERMINAL_PROMPT": "0"}
    clone = subprocess.run(
        netns.in_netns(
            lab.ns("alice"),
            ["git", "clone", "-q", bitbucket.git.url(token=TOKEN), str(lab.workdir / "clone")],
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert clone.returncode == 0, clone.stderr + daemon.context()
    sources = {remote for remote, status, _ in bitbucket.git.seen() if status == 200}
    assert sources == {EGRESS}, bitbucket.git.seen()

    status = lab.repogate("status").stdout
    assert f"IPv4: {EGRESS}, SNAT by repogate (egress.snat), out of {bitbucket.uplink}" in status, (
        status
    )

    # Every probe passes through the whole path.
    code, out = probe(lab)
    assert code == 0, out + daemon.context()
    assert "ok   ssh " in out and "ok   altssh " in out and "smart HTTP advertisement" in out, out

    # A changed host key is its own failure: someone may be in the path.
    bitbucket.sshd.rotate_host_keys()
    code, out = probe(lab, "ssh")
    assert code == 1 and "HOST KEY MISMATCH" in out, out
    # A refused token, told apart from...
    bitbucket.git.set_token("another-token")
    code, out = probe(lab, "https")
    assert code == 1 and "the token was refused (HTTP 401)" in out, out
    bitbucket.git.set_token(TOKEN)
    # ...Bitbucket's IP allowlist refusing the egress address.
    bitbucket.git.set_allowed_sources(["198.51.100.99"])
    code, out = probe(lab, "https")
    assert code == 1 and "Bitbucket's IP allowlist refused us" in out, out
    metrics = scrape_metrics(lab)
    assert 'repogate_probe_success{probe="https",type="git-https"} 0.0' in metrics, metrics
    assert 'repogate_probe_success{probe="ssh",type="ssh"} 0.0' in metrics
    shown = json.loads(lab.repogate("status", "--json").stdout)["probes"]
    assert {p["name"]: p["ok"] for p in shown} == {"ssh": False, "altssh": True, "https": False}

    # The declared egress address leaves the uplink: status and metrics say so.
    netns.run(["ip", "-n", lab.gw, "address", "del", f"{EGRESS}/32", "dev", bitbucket.uplink])

    def gone() -> bool:
        return f'repogate_egress_address_present{{address="{EGRESS}"}} 0.0' in scrape_metrics(lab)

    assert wait_until(gone, 5.0, step=0.2) is not None, daemon.context()
    assert f"PROBLEM: egress address {EGRESS} is on no interface" in lab.repogate("status").stdout
