"""One HTTP(S) GET, the one place repogate fetches a URL.

Standard library only (`http.client` and `ssl`), so the .deb depends on nothing new.
`http.client` rather than `urllib.request`, because a gate needs control urllib hides:

- the socket timeout is re-armed before every read, capped by what is left of the overall
  deadline, so a server dripping one byte every few seconds cannot hold a refresh forever
  (urllib sets the timeout once and then reads in a loop);
- redirects are followed by hand: at most MAX_REDIRECTS, never from https to http unless
  allow_insecure, and the bearer token never follows to another origin (urllib forwards
  `Authorization` to any host it is redirected to: the token leaks, and presigned S3 URLs,
  where MDM exports often redirect, reject a second credential);
- no file://, ftp:// or data: handlers, and no proxy picked up from the environment, so what
  is fetched depends on the config alone.

Every failure is a SourceError whose message starts with the configured URL and says what
went wrong in an admin's words; the token is never part of any message.
"""

from __future__ import annotations

import codecs
import http.client
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Protocol

from repogate import __version__
from repogate.config.schema import HttpOptions
from repogate.errors import SourceError
from repogate.sources.trust import read_token, tls_context
from repogate.sources.urls import Target, UrlError, display_url, parse_target, retry_after

USER_AGENT = f"repogate/{__version__}"
MAX_REDIRECTS = 5
# The overall deadline of one fetch, redirects included, in units of the per-operation
# timeout: 10 s per connect or read gives a whole fetch 40 s.
DEADLINE_FACTOR = 4
_READ_PIECE = 64 * 1024
DETAIL_BYTES = 4096  # of an error body, for connectors that read their vendor's errors
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class HttpResponse:
    """A 200 answer: its body decoded, and the validators for the next conditional request."""

    url: str  # where the body came from, after redirects
    text: str
    size: int  # body bytes as received
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Call:
    """A request other than a plain GET of a list: an API call (MDM connectors).

    `authorization` is the whole header value ("Bearer ..."); like the token of a
    list, it is sent to the configured origin only. A redirect is followed for GET
    only: a POST carrying a client secret is never re-sent elsewhere.
    """

    method: str = "GET"
    body: bytes | None = None
    content_type: str | None = None
    authorization: str | None = None
    accept: str = "*/*"


class HttpStatusError(SourceError):
    """The server answered, but not 200: the status, its Retry-After, a bit of its body.

    `detail` is at most DETAIL_BYTES of the error body as text, for connectors that can
    read their vendor's error format; it is never part of the message (it may echo
    anything the server chose to send).
    """

    def __init__(
        self, message: str, status: int, retry_after: float | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


class Fetcher(Protocol):
    """What sources call to fetch; tests hand in a fake instead of a server."""

    def __call__(
        self, options: HttpOptions, *, etag: str | None, last_modified: str | None
    ) -> HttpResponse | None: ...


class _FetchError(UrlError):
    """A fetch failed for a reason already worded for the admin (the URL is added later)."""


class _StatusError(_FetchError):
    def __init__(self, message: str, status: int, retry_after: float | None, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


@dataclass
class _Clock:
    """The per-operation timeout, capped by what is left of the overall deadline."""

    timeout: float
    budget: float
    ends: float
    phase: str = "connecting"

    def next_timeout(self) -> float:
        remaining = self.ends - time.monotonic()
        if remaining <= 0:
            raise _FetchError(self.deadline_message())
        return min(self.timeout, remaining)

    def expired(self) -> bool:
        return time.monotonic() >= self.ends

    def deadline_message(self) -> str:
        return f"gave up {self.phase}: the whole fetch may take at most {self.budget:g} s"


def fetch_url(
    options: HttpOptions,
    *,
    etag: str | None,
    last_modified: str | None,
    deadline: float | None = None,
) -> HttpResponse | None:
    """GET `options.url`; None means 304 Not Modified. Every failure raises SourceError.

    `etag` and `last_modified` are the validators of the last response the caller accepted.
    `timeout` bounds the connect, the TLS handshake and each read; `deadline` (default
    DEADLINE_FACTOR x timeout) bounds the whole fetch, redirects included.
    """
    return _run(options, Call(), etag, last_modified, deadline)


def call(options: HttpOptions, request: Call, *, deadline: float | None = None) -> HttpResponse:
    """One API request to `options.url`; anything but 200 raises (HttpStatusError for a
    status, with its Retry-After), with the same limits and messages as `fetch_url`."""
    answer = _run(options, request, None, None, deadline)
    if answer is None:
        raise SourceError(
            f"{options.url}: HTTP 304 Not Modified to a request that was not conditional"
        )
    return answer


def _run(
    options: HttpOptions,
    request: Call,
    etag: str | None,
    last_modified: str | None,
    deadline: float | None,
) -> HttpResponse | None:
    budget = options.timeout * DEADLINE_FACTOR if deadline is None else deadline
    clock = _Clock(options.timeout, budget, time.monotonic() + budget)
    shown = display_url(options.url) if request.method != "GET" else options.url
    try:
        return _fetch(options, request, etag, last_modified, clock)
    except _StatusError as exc:
        raise HttpStatusError(f"{shown}: {exc}", exc.status, exc.retry_after, exc.detail) from exc
    except (UrlError, SourceError) as exc:  # SourceError: the token or CA file
        raise SourceError(f"{shown}: {exc}") from exc


def _fetch(
    options: HttpOptions,
    request: Call,
    etag: str | None,
    last_modified: str | None,
    clock: _Clock,
) -> HttpResponse | None:
    target = parse_target(options.url, options.allow_insecure, redirected=False)
    authorization = request.authorization
    if authorization is None and options.token_file is not None:
        authorization = f"Bearer {read_token(options.token_file)}"
    headers = {"User-Agent": USER_AGENT, "Accept": request.accept}
    if request.content_type:
        headers["Content-Type"] = request.content_type
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    first_origin = target.origin
    context: ssl.SSLContext | None = None
    for _ in range(MAX_REDIRECTS + 1):
        sent = dict(headers)
        # The token is for the configured origin only: never to another host, and never
        # in clear text to the same host after a redirect from https to http.
        if authorization is not None and target.origin == first_origin:
            sent["Authorization"] = authorization
        if target.https and context is None:
            context = tls_context(options.ca_file)
        answer = _exchange(target, sent, request, options, context, clock)
        if isinstance(answer, str):
            if request.method != "GET":
                raise _FetchError(
                    f"redirected to {display_url(answer)}: a {request.method} is not followed"
                )
            target = parse_target(
                urllib.parse.urljoin(target.url, answer), options.allow_insecure, redirected=True
            )
            continue
        if answer is None and not (etag or last_modified):
            raise _FetchError("HTTP 304 Not Modified to a request that was not conditional")
        return answer
    raise _FetchError(f"more than {MAX_REDIRECTS} redirects")


def _exchange(  # noqa: PLR0917 - the request's parts, each used once
    target: Target,
    headers: Mapping[str, str],
    request: Call,
    options: HttpOptions,
    context: ssl.SSLContext | None,
    clock: _Clock,
) -> HttpResponse | str | None:
    """One request: the response, a redirect's Location (str), or None for 304."""
    connection: http.client.HTTPConnection
    if target.https:
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=clock.next_timeout(), context=context
        )
    else:
        connection = http.client.HTTPConnection(
            target.host, target.port, timeout=clock.next_timeout()
        )
    response: http.client.HTTPResponse | None = None
    clock.phase = f"connecting to {target.address}"
    try:
        connection.connect()  # DNS, TCP and the TLS handshake, each bounded by the timeout
        # Kept here: http.client drops `connection.sock` once a response says it will close
        # the connection, but the body is still read from this socket.
        sock = connection.sock
        clock.phase = f"waiting for {target.address} to answer"
        connection.request(request.method, target.path, body=request.body, headers=dict(headers))
        sock.settimeout(clock.next_timeout())
        response = connection.getresponse()
        if response.status in _REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise _FetchError(f"HTTP {response.status} {response.reason} without a Location")
            return location
        if response.status == 304:
            return None
        if response.status != 200:
            raise _status_error(response, sock, clock)
        clock.phase = f"reading the body from {target.address}"
        body = _read_body(response, sock, options.max_bytes, clock)
        return HttpResponse(
            url=target.url,
            text=_decode(body, response.headers),
            size=len(body),
            etag=response.getheader("ETag"),
            last_modified=response.getheader("Last-Modified"),
            content_type=response.getheader("Content-Type"),
        )
    except (OSError, http.client.HTTPException) as exc:
        raise _FetchError(_describe(exc, target, options, clock)) from exc
    finally:
        if response is not None:
            response.close()
        connection.close()


def _read_body(
    response: http.client.HTTPResponse, sock: socket.socket, limit: int, clock: _Clock
) -> bytes:
    """Read at most limit + 1 bytes: one more than allowed proves the body is too large."""
    encoding = response.getheader("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise _FetchError(f"unsupported Content-Encoding {encoding!r} (repogate asks for identity)")
    declared = response.length  # None when chunked or when the server sent no length
    if declared is not None and declared > limit:
        raise _FetchError(f"body over {limit} bytes (Content-Length: {declared}; see max_bytes)")
    pieces: list[bytes] = []
    size = 0
    while True:
        sock.settimeout(clock.next_timeout())
        # read1: at most one recv, so each read is bounded by the timeout just set.
        piece = response.read1(min(_READ_PIECE, limit + 1 - size))
        if not piece:
            break
        size += len(piece)
        if size > limit:
            raise _FetchError(f"body over {limit} bytes (see max_bytes)")
        pieces.append(piece)
    if declared is not None and size < declared:
        # http.client's read1 reports a short body as a normal end; a cut list is not one.
        raise _FetchError(f"the connection closed after {size} of {declared} bytes")
    return b"".join(pieces)


def _status_error(
    response: http.client.HTTPResponse, sock: socket.socket, clock: _Clock
) -> _StatusError:
    """A non-200 answer, with its Retry-After and the start of its body (best effort)."""
    detail = b""
    try:
        sock.settimeout(min(clock.next_timeout(), 2.0))
        detail = response.read1(DETAIL_BYTES)
    except (OSError, http.client.HTTPException, _FetchError):
        pass
    return _StatusError(
        f"HTTP {response.status} {response.reason}".rstrip(),
        response.status,
        retry_after(response.getheader("Retry-After")),
        detail.decode("utf-8", "replace"),
    )


def _decode(body: bytes, headers: Message) -> str:
    charset = headers.get_content_charset() or "utf-8"
    try:
        codec = codecs.lookup(charset).name
    except LookupError as exc:
        raise _FetchError(f"unknown charset {charset!r} in Content-Type") from exc
    if codec == "utf-8":
        codec = "utf-8-sig"  # exports written on Windows often start with a BOM
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        raise _FetchError(
            f"the body is not {charset} text (byte {exc.start}: {exc.reason})"
        ) from exc


def _describe(  # noqa: PLR0911 - one return per kind of failure, in precedence order
    exc: BaseException, target: Target, options: HttpOptions, clock: _Clock
) -> str:
    """Word a socket, TLS or HTTP error for the admin. Order matters: SSLError is an OSError."""
    if isinstance(exc, TimeoutError):
        if clock.expired():
            return clock.deadline_message()
        return f"timed out after {options.timeout:g} s {clock.phase}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {target.host}: {exc.strerror}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = (
            f"trusting only the CA in {options.ca_file}"
            if options.ca_file is not None
            else "trusting the system's CA store; set ca_file for a private CA"
        )
        detail = exc.verify_message or exc.reason or str(exc)
        return f"certificate verify failed: {detail} ({target.address}, {trusted})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        hint = " (is it a plain HTTP server?)" if reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS with {target.address} failed: {reason}{hint}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return f"{target.address} closed the connection without answering"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed mid-body after {len(exc.partial)} bytes of a chunk"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response from {target.address}: {type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and clock.phase.startswith("connecting"):
        return f"cannot connect to {target.address}: {exc.strerror or exc}"
    strerror = exc.strerror if isinstance(exc, OSError) else None
    return f"connection failed {clock.phase}: {strerror or exc}"
