"""An HTTPS client list in the lab: a real TLS server in the `other` namespace, the daemon
in the gateway following it, and keeping its last known good list when it fails."""

from __future__ import annotations

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

# A tiny HTTPS file server: serves DIR's files with an ETag (304 on If-None-Match), or
# the status code written in DIR/status when that file exists.
SERVER = r"""
import hashlib, http.server, os, ssl, sys
cert, key, root, address, port = sys.argv[1:6]
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        status_file = os.path.join(root, "status")
        if os.path.exists(status_file):
            self.send_error(int(open(status_file).read()))
            return
        path = os.path.join(root, self.path.lstrip("/"))
        try:
            body = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.ThreadingHTTPServer((address, int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


@pytest.fixture
def https_server(daemon_lab: Lab) -> Iterator[Path]:
    """Serve the lab's workdir/https over TLS from `other`; yield (files dir) and the CA."""
    trustme = pytest.importorskip("trustme")
    root = daemon_lab.workdir / "https"
    root.mkdir(exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(SERVER_ADDRESS)
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    argv = [
        *daemon_lab.python_argv("other"),
        "-c",
        SERVER,
        str(root / "cert.pem"),
        str(root / "key.pem"),
        str(root),
        SERVER_ADDRESS,
        str(PORT),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield root
    finally:
        process.kill()
        process.wait(timeout=5)


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
