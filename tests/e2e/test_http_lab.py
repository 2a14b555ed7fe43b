"""An HTTPS client list in the lab: a real TLS server in the `other` namespace, the daemon
in the gateway following it, and keeping its last known good list when it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.config import office_group
from lab.topology import Lab
from tests.e2e.test_daemon import (
    BOB,
    BOB_NEIGHBOUR,
    OFFICE_WITHOUT_BOB,
    StartDaemon,
    check_enforcing,
    configure,
    scrape_metrics,
    wait_until,
)

SERVER_ADDRESS, PORT = "203.0.113.10", 8443
PLAIN_PORT = 8080  # plain HTTP from <files>/plain: where a refused redirect would lead
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def https_server(daemon_lab: Lab) -> Iterator[Path]:
    """Serve the lab's workdir/https over TLS from `other` (lab.listserver: files there
    script its faults); yield that directory, which holds the CA to trust as ca.pem."""
    pytest.importorskip("trustme")
    from lab.listserver import write_certificates  # needs trustme

    root = daemon_lab.workdir / "https"
    root.mkdir(exist_ok=True)
    write_certificates(root, SERVER_ADDRESS)
    argv = [
        *daemon_lab.python_argv("other"),
        *("-m", "lab.listserver", "--dir", str(root), "--address", SERVER_ADDRESS),
        *("--port", str(PORT), "--plain-port", str(PLAIN_PORT)),
    ]
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield root
    finally:
        process.kill()
        process.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


def test_an_https_list_is_followed_and_survives_its_server_failing(
    daemon_lab: Lab, https_server: Path, start_daemon: StartDaemon
) -> None:
    lab, root = daemon_lab, https_server
    (root / "laptops.txt").write_text(f"# compliant laptops\n{BOB}\nnot-an-address\n")
    overrides: dict[str, Any] = {
        "clients": [
            office_group(OFFICE_WITHOUT_BOB),
            {
                "name": "laptops",
                "type": "http",
                "url": f"https://{SERVER_ADDRESS}:{PORT}/laptops.txt",
                "ca_file": str(root / "ca.pem"),
                "interval": "1s",
                "timeout": "2s",
            },
        ]
    }
    configure(lab, overrides)
    daemon = start_daemon()
    daemon.wait_ready()

    took = wait_until(
        lambda: not check_enforcing(lab, allowed=[("bob", BOB)], refused=[("bob", BOB_NEIGHBOUR)]),
        timeout=6,
    )
    assert took is not None, daemon.context()
    assert "source laptops: 1 entry rejected (line 3: 'not-an-address'" in daemon.log()

    changed = time.monotonic()
    (root / "laptops.txt").write_text(f"{BOB_NEIGHBOUR}\n")
    took = wait_until(
        lambda: not check_enforcing(lab, allowed=[("bob", BOB_NEIGHBOUR)], refused=[("bob", BOB)]),
        timeout=6,
    )
    assert took is not None, daemon.context()
    print(f"list change took effect after {time.monotonic() - changed:.1f} s")

    (root / "status").write_text("500")  # the MDM breaks
    stale = wait_until(
        lambda: 'repogate_source_stale{source="laptops"} 1.0' in scrape_metrics(lab), timeout=8
    )
    assert stale is not None, daemon.context()
    assert "HTTP 500" in daemon.log()
    problems = check_enforcing(lab, allowed=[("bob", BOB_NEIGHBOUR)], refused=[("bob", BOB)])
    assert not problems, "\n".join(problems) + daemon.context()
