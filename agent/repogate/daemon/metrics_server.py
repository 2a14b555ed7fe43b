"""The metrics endpoint: Prometheus's WSGI app on its own HTTP(S) server.

Localhost by default; TLS and basic auth when configured (the password read from
its file at start, compared in constant time). Kept apart from the metric
definitions (daemon.metrics): this is the part that listens.
"""

from __future__ import annotations

import base64
import hmac
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from repogate.config.schema import MetricsConfig
from repogate.errors import RepogateError


class MetricsError(RepogateError):
    """The metrics endpoint cannot be served as configured."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the events that matter


class MetricsServer:
    """Serves /metrics from a background thread until `close()`."""

    def __init__(self, settings: MetricsConfig, app: Callable[..., Any]) -> None:
        """`app`: the WSGI app serving the metrics (Metrics.wsgi_app)."""
        if settings.host is None:
            raise MetricsError('metrics are turned off (metrics.listen = "")')
        if settings.basic_auth_user and settings.basic_auth_password_file:
            app = _basic_auth(app, settings.basic_auth_user, settings.basic_auth_password_file)
        server_class = _Server6 if ":" in settings.host else _Server
        try:
            self._server = make_server(
                settings.host,
                settings.port,
                app,
                server_class=server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise MetricsError(
                f"cannot listen on {settings.host}:{settings.port} for metrics: "
                f"{exc.strerror or exc}"
            ) from exc
        if settings.tls_cert_file and settings.tls_key_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                self._server.server_close()
                raise MetricsError(f"cannot load the metrics TLS certificate: {exc}") from exc
            # The handshake happens in the request's thread, so a stalled client cannot
            # hold up the accept loop.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _basic_auth(app: Callable[..., Any], user: str, password_file: Path) -> Callable[..., Any]:
    try:
        password = password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MetricsError(f"cannot read {password_file}: {exc.strerror or exc}") from exc
    if not password:
        raise MetricsError(f"{password_file} is empty")
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        given = environ.get("HTTP_AUTHORIZATION", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="repogate"'), ("Content-Type", "text/plain")],
            )
            return [b"unauthorized\n"]
        return app(environ, start_response)

    return guarded
