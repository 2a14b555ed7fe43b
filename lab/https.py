"""Real HTTP(S) servers on 127.0.0.1 for the http and feed sources' tests.

Each server is `http.server.ThreadingHTTPServer` in a background thread on an ephemeral
port. `serve(tls)` runs one; `https_lab()` runs the set the tests need, each wrapping its
connections in TLS with a certificate issued by a throwaway `trustme` CA whose certificate
is written to disk, so a test passes it as `ca_file` exactly as an admin would:

    with https_lab() as lab:
        url = lab.good.route("/export.txt", Route(body=b"10.0.0.1\n", headers={"ETag": '"1"'}))
        HttpOptions(url, ca_file=lab.ca.ca_file)

Routes are scripted per path (status, body, headers, delays, a token check, a lying
Content-Length), and every request is recorded so tests can assert what the client sent
(`If-None-Match`, `Authorization`).

The TLS handshake runs in the connection's own thread, not in the accept loop: a client that
rejects the server's certificate (the point of the bad-CA, expired and wrong-host servers)
then fails only its own connection. Shutdown never waits on a sleeping route or an idle
connection: slow routes sleep on an event that stopping sets, and open connections are shut
down, so a test run is never held up by its own servers, even when a test fails.

`trustme` is a test dependency, so only tests import this module.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

from lab.errors import LabError

LOOPBACK = "127.0.0.1"
SERVER_NAMES = ("localhost", LOOPBACK)
# How long a connection may sit idle before the server drops it (a safety net only:
# stopping shuts every open connection down at once).
IDLE_TIMEOUT = 10.0
WRITE_PIECE = 64 * 1024


@dataclass(frozen=True)
class Route:
    """What one path answers.

    `body` is sent `repeat` times, so a multi-gigabyte body costs no memory. `chunked` sends
    no Content-Length (Transfer-Encoding: chunked), `content_length` declares a length other
    than the real one (a truncated body), `delay` sleeps before the status line (longer than
    the client's timeout: the slow route), `drip` sleeps between pieces of the body (each
    read is quick, the whole never ends: the overall deadline), and `token` answers 401 unless
    the request carries `Authorization: Bearer <token>`. A route with an `ETag` or
    `Last-Modified` header answers 304 to a matching conditional request.
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    repeat: int = 1
    chunked: bool = False
    content_length: int | None = None
    delay: float = 0.0
    drip: float = 0.0
    token: str | None = None


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: Mapping[str, str]


class LabHttpServer:
    """One running server: its routes, its URLs, and the requests it has seen."""

    def __init__(self, tls: ssl.SSLContext | None, host: str = LOOPBACK) -> None:
        self.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self._routes: dict[str, Route] = {}
        self._seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        try:
            self._server = _Server((host, 0), self)
        except OSError as exc:
            raise LabError(f"cannot listen on {host}: {exc}") from exc
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"lab-{self.scheme}-{self.port}",
            daemon=True,
        )

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def route(self, path: str, route: Route) -> str:
        """Script `path` (query strings are ignored) and return its URL."""
        with self._lock:
            self._routes[path] = route
        return self.url(path)

    def routes(self, routes: Mapping[str, Route]) -> None:
        with self._lock:
            self._routes.update(routes)

    def requests(self, path: str | None = None) -> list[SeenRequest]:
        with self._lock:
            return [seen for seen in self._seen if path is None or seen.path == path]

    def reset(self) -> None:
        """Forget every route and request (a module-scoped server between tests)."""
        with self._lock:
            self._routes.clear()
            self._seen.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    # Called from the handler threads.

    def record(self, seen: SeenRequest) -> Route | None:
        """Remember a request and return the route that answers it."""
        with self._lock:
            self._seen.append(seen)
            return self._routes.get(seen.path.partition("?")[0])


class TrackedServer(ThreadingHTTPServer):
    """A threading HTTP(S) server whose TLS handshakes run in the connection's thread and
    whose open connections `close_connections` shuts at once (lab.mdm builds on it)."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        self.tls = tls
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the FQDN of the address: a DNS query for nothing.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake here, in the connection's own thread, and track it until it ends."""
        connection: socket.socket = request
        connection.settimeout(IDLE_TIMEOUT)
        with self._open_lock:
            self._open.add(connection)  # tracked from the start: a stalled handshake too
        try:
            if self.tls is not None:
                wrapped = self.tls.wrap_socket(
                    connection, server_side=True, do_handshake_on_connect=False
                )
                with self._open_lock:
                    self._open.discard(connection)
                    self._open.add(wrapped)
                connection = wrapped
                connection.do_handshake()
            self.RequestHandlerClass(connection, client_address, self)
        except OSError:
            # ssl.SSLError included: the client refused our certificate, or hung up
            # mid-answer (it stopped reading at max_bytes). The test expects exactly that.
            pass
        finally:
            with self._open_lock:
                self._open.discard(connection)
            connection.close()

    def close_connections(self) -> None:
        with self._open_lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: broken connections are what half of these tests provoke."""


class _Server(TrackedServer):
    def __init__(self, address: tuple[str, int], lab: LabHttpServer) -> None:
        self.lab = lab
        super().__init__(address, _Handler, lab.tls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked bodies need HTTP/1.1
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the test's own output, not an access log."""

    def do_GET(self) -> None:
        lab = self.server.lab
        headers = {name.lower(): value for name, value in self.headers.items()}
        route = lab.record(SeenRequest(self.command, self.path, headers))
        if route is None:
            self._answer(404, b"no such route\n", {})
            return
        if route.delay and lab.stopping.wait(route.delay):
            return
        if route.token is not None and headers.get("authorization") != f"Bearer {route.token}":
            self._answer(401, b"bad or missing token\n", {"WWW-Authenticate": "Bearer"})
            return
        if _not_modified(route.headers, headers):
            self._answer(304, b"", dict(route.headers))
            return
        self._send_body(route)

    def _answer(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_body(self, route: Route) -> None:
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            declared = route.content_length
            if declared is None:
                declared = len(route.body) * route.repeat
            self.send_header("Content-Length", str(declared))
        self.send_header("Connection", "close")
        self.end_headers()
        for piece in _pieces(route.body, route.repeat, coalesce=not route.drip):
            if route.drip and self.server.lab.stopping.wait(route.drip):
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if route.chunked else piece)
        if route.chunked:
            self.wfile.write(b"0\r\n\r\n")


def _pieces(body: bytes, repeat: int, *, coalesce: bool = True) -> Iterator[bytes]:
    """The body, `repeat` times, in pieces of at most WRITE_PIECE bytes.

    Without `coalesce`, each repetition is its own piece (a drip sends them one by one).
    """
    if not body:
        return
    if len(body) >= WRITE_PIECE or not coalesce:
        for _ in range(repeat):
            for start in range(0, len(body), WRITE_PIECE):
                yield body[start : start + WRITE_PIECE]
        return
    per_piece = max(1, WRITE_PIECE // len(body))
    left = repeat
    while left > 0:
        count = min(per_piece, left)
        yield body * count
        left -= count


def _not_modified(route_headers: Mapping[str, str], request: Mapping[str, str]) -> bool:
    """RFC 9110: If-None-Match wins over If-Modified-Since; `*` matches any current entity."""
    own = {name.lower(): value for name, value in route_headers.items()}
    if "if-none-match" in request:
        etag = own.get("etag")
        wanted = [tag.strip() for tag in request["if-none-match"].split(",")]
        return etag is not None and ("*" in wanted or etag in wanted)
    if "if-modified-since" in request and "last-modified" in own:
        try:
            since = email.utils.parsedate_to_datetime(request["if-modified-since"])
            modified = email.utils.parsedate_to_datetime(own["last-modified"])
        except (TypeError, ValueError):
            return False
        return modified <= since
    return False


# --- certificates ---


class LabCA:
    """A throwaway certificate authority with its certificate on disk (`ca_file`)."""

    def __init__(self, directory: Path, name: str = "repogate lab CA") -> None:
        self.ca = trustme.CA(organization_name=name)
        self.ca_file = directory / f"{name.replace(' ', '-')}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(
        self,
        names: tuple[str, ...] = SERVER_NAMES,
        *,
        not_after: datetime.datetime | None = None,
    ) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for `names`."""
        # Only the options given: Debian bookworm's trustme 0.9 knows no `not_before`
        # (its certificates start now, so one ending last year is still just expired).
        options: dict[str, datetime.datetime] = {}
        if not_after is not None:
            options["not_after"] = not_after
            if not_after < datetime.datetime.now(datetime.UTC) and _knows_not_before():
                options["not_before"] = not_after - datetime.timedelta(days=30)
        cert = self.ca.issue_cert(*names, **options)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        return context


def _knows_not_before() -> bool:
    import inspect  # noqa: PLC0415 - only for this version probe

    source = inspect.getsource(trustme.CA.issue_cert)
    return "not_before" in source


@contextlib.contextmanager
def serve(tls: ssl.SSLContext | None) -> Iterator[LabHttpServer]:
    """Run one server (HTTPS with `tls`, plain HTTP without) until the block ends."""
    server = LabHttpServer(tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class HttpsLab:
    """The servers a test of the HTTPS sources needs, all on 127.0.0.1.

    `good` presents a certificate from `ca` (trust it with `ca.ca_file`); `other_ca` one
    from a different CA; `expired` an expired one from `ca`; `wrong_host` one from `ca` for
    another name; `plain` speaks plain HTTP (for allow_insecure and https->http redirects).
    """

    ca: LabCA
    good: LabHttpServer
    other_ca: LabHttpServer
    expired: LabHttpServer
    wrong_host: LabHttpServer
    plain: LabHttpServer

    @property
    def servers(self) -> tuple[LabHttpServer, ...]:
        return (self.good, self.other_ca, self.expired, self.wrong_host, self.plain)

    def reset(self) -> None:
        for server in self.servers:
            server.reset()


@contextlib.contextmanager
def https_lab(directory: Path | None = None) -> Iterator[HttpsLab]:
    """Start every server of an HttpsLab; stop them all when the block ends, however it ends."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rg-tls-")))
        ca = LabCA(directory)
        other = LabCA(directory, "other lab CA")
        last_year = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=365)
        yield HttpsLab(
            ca=ca,
            good=stack.enter_context(serve(ca.server_context())),
            other_ca=stack.enter_context(serve(other.server_context())),
            expired=stack.enter_context(serve(ca.server_context(not_after=last_year))),
            wrong_host=stack.enter_context(serve(ca.server_context(("wrong.example",)))),
            plain=stack.enter_context(serve(None)),
        )
