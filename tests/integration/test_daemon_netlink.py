"""The daemon watches links and addresses through netlink (pyroute2), in a namespace."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, Namespace

CONFIG = """
[agent]
state_dir = "{state}"
egress_interfaces = ["rgeg0"]

[destinations.bitbucket]
networks = ["198.51.100.0/24"]
ports = [22, 443]

[[clients]]
name = "office"
type = "static"
addresses = ["10.20.0.0/16"]
"""


def start_daemon(netns: Namespace, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`repogate run` in the namespace, its output in `log`; the caller stops it."""
    argv = ["ip", "netns", "exec", netns.name, "env", f"PYTHONPATH={REPO / 'agent'}"]
    argv += [sys.executable, "-m", "repogate", "run", "--config", str(config)]
    with log.open("w") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)


def wait_for(path: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout}s:\n{path.read_text()}")


def test_egress_address_changes_are_logged_and_reported(netns: Namespace) -> None:
    netns.run("ip", "link", "add", "rgeg0", "type", "veth", "peer", "name", "rgeg1")
    config = netns.write_config(CONFIG.format(state=netns.workdir / "state"))
    log = netns.workdir / "daemon.log"
    daemon = start_daemon(netns, config, log)
    try:
        wait_for(log, "ready:")
        assert "egress interface addresses: none found" in log.read_text()
        netns.run("ip", "addr", "add", "192.0.2.77/24", "dev", "rgeg0")
        netns.run("ip", "link", "set", "rgeg0", "up")
        netns.run("ip", "link", "set", "rgeg1", "up")
        wait_for(log, "rgeg0 192.0.2.77")
        wait_for(log, "link event: rgeg0 link-up")
        status = netns.repogate("status", config=config)
        assert "    rgeg0 192.0.2.77" in status.stdout
        netns.run("ip", "addr", "del", "192.0.2.77/24", "dev", "rgeg0")
        wait_for(log, "link event: rgeg0 address-removed 192.0.2.77")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            raise
    assert code == 0


def test_the_boot_ruleset_restores_the_gate_before_the_daemon_runs(netns: Namespace) -> None:
    state = netns.workdir / "state"
    config = netns.write_config(
        CONFIG.format(state=state).replace('egress_interfaces = ["rgeg0"]', "")
    )
    log = netns.workdir / "daemon.log"
    daemon = start_daemon(netns, config, log)
    try:
        wait_for(log, "ready:")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
    ruleset = state / "ruleset.nft"
    enforced = netns.nft("list", "table", "inet", "repogate")
    # A reboot: the kernel forgets everything, nftables.service loads its config.
    netns.run("nft", "flush", "ruleset")
    netns.run("nft", "-f", str(ruleset))
    assert netns.nft("list", "table", "inet", "repogate") == enforced
    netns.run("nft", "-f", str(ruleset))  # loading it again replaces, never duplicates
    assert netns.nft("list", "table", "inet", "repogate") == enforced
    assert "in sync, no changes" in netns.repogate("sync", config=config).stdout


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt prometheus)")
def test_metrics_follow_prometheus_conventions(netns: Namespace) -> None:
    netns.run("ip", "link", "set", "lo", "up")
    config = netns.write_config(
        CONFIG.format(state=netns.workdir / "state") + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
    )
    log = netns.workdir / "daemon.log"
    daemon = start_daemon(netns, config, log)
    try:
        text = wait_for(log, "/metrics")
        port = re.search(r"127\.0\.0\.1:(\d+)/metrics", text)
        assert port, text
        script = (
            "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{port.group(1)}/metrics', timeout=5).read().decode())"
        )
        scraped = netns.run(sys.executable, "-c", script).stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
    for name in ("repogate_build_info", "repogate_set_elements", "repogate_packets_total"):
        assert name in scraped
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=scraped, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout + lint.stderr
