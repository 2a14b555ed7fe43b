"""The daemon's HTTP listeners: the metrics endpoint's start, and the "why" page.

The "why" page: a device asks over plain HTTP and learns its own verdict, and why.

A developer whose `git push` is refused opens http://<gateway>:8080/ from the same
machine and reads which device repogate thinks it is and the reason (Intune says
non-compliant, last sync too old, not seen on the VPN). The answer is keyed on the
connection's source address alone, so it says nothing about anyone else; nothing
is taken from the request but its path. Off unless `[why] listen` names addresses;
they are bound with IP_FREEBIND, so a VPN address that appears after the daemon
starts is served from then on. Plain text, one small thread per request, a short
socket timeout: the page cannot hold the daemon up.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from repogate.config.schema import MetricsConfig
from repogate.daemon.metrics import Metrics
from repogate.daemon.metrics_server import MetricsError, MetricsServer
from repogate.logs import event

log = logging.getLogger("repogate")
IP_FREEBIND = 15  # linux/in.h; also honoured for IPv6 sockets since Linux 4.15
REQUEST_TIMEOUT = 5.0

Answer = Callable[[str], str]  # client address -> the page


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    answer: Answer

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        super().server_bind()


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "repogate"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the daemon's log is for the admin's events, not page views

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/", "/why"):
            self._send(404, "not found: ask / for your own verdict\n")
            return
        address = self.client_address[0].removeprefix("::ffff:")
        try:
            page = self.server.answer(address)
        except Exception:  # the page must never take the daemon down
            log.exception("why page failed for %s", address)
            self._send(500, "repogate could not build the answer; ask your admin\n")
            return
        self._send(200, page)

    def _send(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class WhyServer:
    """The page on each configured address; `close` stops them all."""

    def __init__(self, listen: tuple[tuple[str, int], ...], answer: Answer) -> None:
        self._servers: list[_Server] = []
        for address, port in listen:
            kind = _V6Server if ":" in address else _Server
            try:
                server = kind((address, port), _Handler)
            except OSError as exc:
                log.error("why page: cannot listen on %s port %d: %s", address, port, exc)
                continue
            server.answer = answer
            self._servers.append(server)
            threading.Thread(
                target=server.serve_forever, name=f"why-{address}", daemon=True
            ).start()
            shown = f"[{address}]" if ":" in address else address
            log.info("why page on http://%s:%d/", shown, server.server_address[1])

    @property
    def ports(self) -> list[int]:
        return [int(server.server_address[1]) for server in self._servers]

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


def start_metrics(config: MetricsConfig, metrics: Metrics) -> MetricsServer | None:
    """The metrics endpoint, or None (logged) when it cannot listen."""
    try:
        server = MetricsServer(config, metrics.wsgi_app())
    except MetricsError as exc:
        log.error("%s", exc)
        return None
    scheme = "https" if config.tls_cert_file else "http"
    host = config.host or ""
    shown = f"[{host}]" if ":" in host else host
    event(log, logging.INFO, f"metrics on {scheme}://{shown}:{server.port}/metrics")
    return server
