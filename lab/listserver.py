"""An HTTPS list server for the lab's namespaces, scripted by files beside what it serves.

The daemon's e2e and fault tests run it in the `other` namespace
(`python -m lab.listserver --dir D --address A --port P [--plain-port Q]`); it prints
`ready` once listening and serves until killed. A test changes its behaviour by writing
or deleting files in D, read again at every connection or request, so a fault starts and
clears at a known moment without restarting anything:

    status     answer that status code instead of the file
    reset      read the request, then reset the connection (TCP RST, no answer)
    stall      read the request and answer nothing while the file exists
    trickle    200, chunked: the file, then a line every `float(content)` s (default 0.5),
               never the end, while it exists
    redirect   answer 302 with the file's content as Location
    chunked    send files chunked, without Content-Length
    cert       present `expired` (by the right CA) or `other-ca` (a stranger's CA)

Otherwise a file is served with an ETag (304 on a matching If-None-Match). With
`--plain-port`, plain HTTP is served from D/plain too, and each request it gets is
appended to D/plain-requests: a redirect to http:// that a client followed shows there.

`write_certificates(D, A)` writes the CAs and certificates first: `ca.pem` is what a
client trusts. The certificate is picked at each handshake (an SNI callback, called
with or without SNI), so a switch reaches the very next connection.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from lab.https import TrackedServer

CERTS = {"good": "cert", "expired": "expired", "other-ca": "other"}
POLL = 0.1  # seconds between looks at a stall or trickle file
STOPPING = threading.Event()


def write_certificates(directory: Path, host: str) -> None:
    """ca.pem (trusted), and <name>.pem/<name>.key.pem for each of CERTS' certificates."""
    import trustme  # noqa: PLC0415 - a test dependency, only needed by the test side

    ca, stranger = trustme.CA(), trustme.CA(organization_name="someone else")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    last_year = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=365)
    try:
        month = datetime.timedelta(days=30)
        expired = ca.issue_cert(host, not_before=last_year - month, not_after=last_year)
    except TypeError:  # trustme < 1.1 has no not_before: from now to last year is expired too
        expired = ca.issue_cert(host, not_after=last_year)
    for name, cert in (
        ("cert", ca.issue_cert(host)),
        ("expired", expired),
        ("other", stranger.issue_cert(host)),
    ):
        cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(directory / f"{name}.key.pem"))


def _contexts(directory: Path) -> dict[str, ssl.SSLContext]:
    contexts = {}
    for choice, name in CERTS.items():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key.pem")
        contexts[choice] = context
    good = contexts["good"]

    def pick(sock: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: Any) -> None:
        chosen = _read(directory / "cert") or "good"
        sock.context = contexts.get(chosen, good)

    good.sni_callback = pick
    return contexts


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class _Server(TrackedServer):
    def __init__(self, address: tuple[str, int], root: Path, tls: ssl.SSLContext | None) -> None:
        self.root = root
        super().__init__(address, _Handler, tls)

    def server_bind(self) -> None:
        # A fixed port, and the last test's server was killed a moment ago: its
        # connections linger in TIME_WAIT (TrackedServer binds port 0 and skips this).
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked bodies need it; every answer closes anyway
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read what the daemon says, not an access log."""

    def do_GET(self) -> None:  # noqa: PLR0911 - one return per scripted behaviour
        root = self.server.root
        if self.server.tls is None:
            with (root.parent / "plain-requests").open("a") as log:
                log.write(f"{self.command} {self.path}\n")
        elif (root / "reset").exists():
            self.close_connection = True
            with contextlib.suppress(OSError):  # linger 0: close() sends a RST, not a FIN
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            return
        elif (root / "stall").exists():
            while (root / "stall").exists() and not STOPPING.wait(POLL):
                pass
            self.close_connection = True
            return
        elif (every := _read(root / "trickle")) is not None:
            first = _read(root / self.path.lstrip("/")) or ""
            self._trickle(root / "trickle", float(every or 0.5), first.encode())
            return
        elif (location := _read(root / "redirect")) is not None:
            self._answer(302, b"", {"Location": location})
            return
        elif (status := _read(root / "status")) is not None:
            self.send_error(int(status))
            return
        try:
            body = (root / self.path.lstrip("/")).read_bytes()
        except OSError:
            self.send_error(404)
            return
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self._answer(304, None, {"ETag": etag})
            return
        self._answer(200, body, {"ETag": etag}, chunked=(root / "chunked").exists())

    def _answer(
        self, status: int, body: bytes | None, headers: dict[str, str], *, chunked: bool = False
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body and chunked:
            for start in range(0, len(body), 1000):
                piece = body[start : start + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif body:
            self.wfile.write(body)

    def _trickle(self, path: Path, every: float, first: bytes) -> None:
        """A body that never ends: `first`, then a line at a time; each read is quick, the
        whole never completes."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        if first:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
        line = b"# still coming\n"
        while path.exists() and not STOPPING.wait(every):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.close_connection = True  # no last chunk: cut, never a complete list


def serve(root: Path, address: str, port: int, plain_port: int | None) -> None:
    tls = _contexts(root)["good"]
    servers = [_Server((address, port), root, tls)]
    if plain_port is not None:
        (root / "plain").mkdir(exist_ok=True)
        servers.append(_Server((address, plain_port), root / "plain", None))
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        for s in servers
    ]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    finally:
        STOPPING.set()
        for server in servers:
            server.shutdown()
            server.close_connections()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="files, scripts, certificates")
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plain-port", type=int, default=None, help="plain HTTP from DIR/plain")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.dir.resolve(), args.address, args.port, args.plain_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
