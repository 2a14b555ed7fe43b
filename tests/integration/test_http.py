"""HTTP client groups and the IP-range feed against real HTTPS servers on 127.0.0.1.

No root, no network: lab.https runs TLS servers with throwaway trustme CAs on loopback.
The servers start once for the module; each test scripts its own routes.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from lab.https import HttpsLab, Route, https_lab
from repogate import __version__
from repogate.config.schema import FeedConfig, HttpClients, HttpOptions
from repogate.errors import SourceError
from repogate.sources.feed import FeedSource
from repogate.sources.http import HttpSource, fetch_url
from tests.unit.test_feed import (
    BITBUCKET_INGRESS,
    BITBUCKET_INGRESS_ACCEPTED,
    BITBUCKET_INGRESS_REJECTED,
    SAMPLE_TEXT,
)

LIMITS = {4: 8, 6: 32}
LINES = b"# exported by the MDM\n10.20.0.5\n10.20.0.6\n\n2001:db8::7\n10.30.0.0/24\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsLab]:
    with https_lab(tmp_path_factory.mktemp("tls")) as started:
        yield started


@pytest.fixture
def lab(servers: HttpsLab) -> Iterator[HttpsLab]:
    yield servers
    servers.reset()


def options(lab: HttpsLab, url: str, **overrides: Any) -> HttpOptions:
    """Trust the lab's CA, and fail fast: a hung test must not wait 10 s per fetch."""
    return dataclasses.replace(HttpOptions(url, ca_file=lab.ca.ca_file, timeout=2.0), **overrides)


def source(
    lab: HttpsLab,
    url: str,
    fmt: Literal["lines", "json"] = "lines",
    json_path: str | None = None,
    **http: Any,
) -> HttpSource:
    group = HttpClients("mdm", options(lab, url, **http), fmt, json_path)
    return HttpSource(group, LIMITS)


def failure(fetch: Callable[..., object], *args: Any, **kwargs: Any) -> tuple[str, float]:
    """The SourceError's message and how long it took to fail."""
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        fetch(*args, **kwargs)
    return str(caught.value), time.monotonic() - started


# --- a list over HTTPS ---


def test_lines(lab: HttpsLab) -> None:
    url = lab.good.route("/export.txt", Route(body=LINES))
    mdm = source(lab, url)
    result = mdm.fetch()
    assert result.entries.addresses_v4 == {"10.20.0.5", "10.20.0.6"}
    assert result.entries.addresses_v6 == {"2001:db8::7"}
    assert result.entries.networks_v4 == {"10.30.0.0/24"}
    assert (result.accepted, result.rejected_count, result.origin) == (4, 0, url)
    assert mdm.signature() is None
    assert mdm.last_status == 200
    (seen,) = lab.good.requests("/export.txt")
    assert seen.headers["user-agent"] == f"repogate/{__version__}"
    assert seen.headers["accept-encoding"] == "identity"
    assert "authorization" not in seen.headers


def test_json_with_json_path(lab: HttpsLab) -> None:
    body = {"data": {"addresses": ["10.20.0.5", "2001:db8::/48"]}, "count": 2}
    url = lab.good.route("/export.json", Route(body=json.dumps(body).encode()))
    result = source(lab, url, "json", "data.addresses").fetch()
    assert result.entries.addresses_v4 == {"10.20.0.5"}
    assert result.entries.networks_v6 == {"2001:db8::/48"}


def test_a_host_name_is_verified_too(lab: HttpsLab) -> None:
    lab.good.route("/export.txt", Route(body=LINES))
    result = source(lab, lab.good.url("/export.txt", host="localhost")).fetch()
    assert result.accepted == 4


def test_garbage_lines_are_rejected_and_counted_while_good_ones_apply(lab: HttpsLab) -> None:
    body = b"10.20.0.5\n<html>\n10.20.0.999\n0.0.0.0/0\n10.20.0.6\n\xef\xbb\xbfnope\n"
    url = lab.good.route("/garbage.txt", Route(body=body))
    result = source(lab, url).fetch()
    assert result.entries.addresses_v4 == {"10.20.0.5", "10.20.0.6"}
    assert (result.accepted, result.rejected_count) == (2, 4)
    assert [str(rejected) for rejected in result.rejected_sample[:3]] == [
        "line 2: '<html>' is not an IP address or network",
        "line 3: '10.20.0.999' is not an IP address or network",
        "line 4: '0.0.0.0/0' is broader than /8",
    ]


def test_a_utf8_bom_is_ignored(lab: HttpsLab) -> None:
    url = lab.good.route("/bom.txt", Route(body=b"\xef\xbb\xbf10.20.0.5\n"))
    assert source(lab, url).fetch().entries.addresses_v4 == {"10.20.0.5"}


def test_a_body_that_is_not_text_fails(lab: HttpsLab) -> None:
    url = lab.good.route("/binary", Route(body=b"10.20.0.5\n\xff\xfe\n"))
    message, _ = failure(source(lab, url).fetch)
    assert message == f"{url}: the body is not utf-8 text (byte 10: invalid start byte)"


def test_invalid_json_fails_with_the_url(lab: HttpsLab) -> None:
    url = lab.good.route("/broken.json", Route(body=b"{", headers={"ETag": '"b1"'}))
    mdm = source(lab, url, "json")
    message, _ = failure(mdm.fetch)
    assert message.startswith(f"{url}: not valid JSON: ")
    assert mdm.last_status == message


# --- conditional requests ---


def test_not_modified_returns_the_same_result_and_sends_if_none_match(lab: HttpsLab) -> None:
    url = lab.good.route("/export.txt", Route(body=LINES, headers={"ETag": '"v1"'}))
    mdm = source(lab, url)
    first = mdm.fetch()
    assert mdm.fetch() is first
    assert mdm.last_status == 304
    before, after = lab.good.requests("/export.txt")
    assert "if-none-match" not in before.headers
    assert after.headers["if-none-match"] == '"v1"'


def test_if_modified_since_without_an_etag(lab: HttpsLab) -> None:
    stamp = "Thu, 19 Nov 2026 10:00:00 GMT"
    url = lab.good.route("/export.txt", Route(body=LINES, headers={"Last-Modified": stamp}))
    mdm = source(lab, url)
    first = mdm.fetch()
    assert mdm.fetch() is first
    assert lab.good.requests("/export.txt")[1].headers["if-modified-since"] == stamp


def test_a_changed_list_is_fetched_again(lab: HttpsLab) -> None:
    url = lab.good.route("/export.txt", Route(body=LINES, headers={"ETag": '"v1"'}))
    mdm = source(lab, url)
    mdm.fetch()
    lab.good.route("/export.txt", Route(body=b"10.99.0.1\n", headers={"ETag": '"v2"'}))
    assert mdm.fetch().entries.addresses_v4 == {"10.99.0.1"}
    assert mdm.last_status == 200


def test_a_list_that_failed_to_parse_is_not_excused_by_a_304(lab: HttpsLab) -> None:
    url = lab.good.route("/broken.json", Route(body=b"{", headers={"ETag": '"b1"'}))
    mdm = source(lab, url, "json")
    for _ in range(2):
        failure(mdm.fetch)
    assert all("if-none-match" not in seen.headers for seen in lab.good.requests())


# --- HTTP errors ---


@pytest.mark.parametrize(
    ("status", "text"), [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error")]
)
def test_an_error_status_is_a_source_error(lab: HttpsLab, status: int, text: str) -> None:
    url = lab.good.route("/export.txt", Route(status=status, body=b"oops\n"))
    mdm = source(lab, url)
    message, _ = failure(mdm.fetch)
    assert message == f"{url}: {text}"
    assert mdm.last_status == message


def test_an_unrouted_path_is_a_404(lab: HttpsLab) -> None:
    message, _ = failure(source(lab, lab.good.url("/nothing-here")).fetch)
    assert message.endswith(": HTTP 404 Not Found")


# --- time limits ---


def test_a_slow_server_fails_in_about_the_timeout(lab: HttpsLab) -> None:
    url = lab.good.route("/slow", Route(delay=10, body=LINES))
    message, took = failure(source(lab, url, timeout=0.5).fetch)
    assert (
        message
        == f"{url}: timed out after 0.5 s waiting for {lab.good.host}:{lab.good.port} to answer"
    )
    assert 0.45 < took < 1.2


def test_a_body_that_stalls_fails_in_about_the_timeout(lab: HttpsLab) -> None:
    """The headers come at once; the timeout also bounds every read of the body."""
    url = lab.good.route("/stall", Route(body=b"10.20.0.5\n", repeat=3, drip=5))
    message, took = failure(source(lab, url, timeout=0.3).fetch)
    address = f"{lab.good.host}:{lab.good.port}"
    assert message == f"{url}: timed out after 0.3 s reading the body from {address}"
    assert 0.25 < took < 1.0


def test_a_dripping_server_fails_at_the_overall_deadline(lab: HttpsLab) -> None:
    """Each read is quick, so only the overall deadline ends it."""
    url = lab.good.route("/drip", Route(body=b"10.20.0.5\n", repeat=10_000, drip=0.1))
    message, took = failure(
        fetch_url, options(lab, url, timeout=0.5), etag=None, last_modified=None, deadline=1.0
    )
    assert message.startswith(f"{url}: gave up reading the body from ")
    assert message.endswith(": the whole fetch may take at most 1 s")
    assert 0.95 < took < 1.6


def test_a_stalled_tls_handshake_fails_in_about_the_timeout() -> None:
    """TCP connects (the kernel's backlog accepts it) but no TLS ever answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"https://127.0.0.1:{port}/"
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            fetch_url(HttpOptions(url, timeout=0.5), etag=None, last_modified=None)
        took = time.monotonic() - started
    assert str(caught.value) == f"{url}: timed out after 0.5 s connecting to 127.0.0.1:{port}"
    assert 0.45 < took < 1.2


def test_a_refused_connection(lab: HttpsLab) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    url = f"https://127.0.0.1:{port}/"
    message, _ = failure(source(lab, url).fetch)
    assert message == f"{url}: cannot connect to 127.0.0.1:{port}: Connection refused"


# --- size limits ---


def test_a_content_length_over_max_bytes_is_refused_before_reading(lab: HttpsLab) -> None:
    url = lab.good.route("/huge", Route(body=b"10.20.0.5\n" * 100, repeat=10**8))
    message, took = failure(source(lab, url).fetch)
    assert (
        message == f"{url}: body over 16777216 bytes (Content-Length: 100000000000; see max_bytes)"
    )
    assert took < 1


def test_a_chunked_body_over_max_bytes_stops_at_the_limit(lab: HttpsLab) -> None:
    url = lab.good.route("/huge", Route(body=b"10.20.0.5\n" * 100, repeat=10**8, chunked=True))
    message, took = failure(source(lab, url, max_bytes=100_000).fetch)
    assert message == f"{url}: body over 100000 bytes (see max_bytes)"
    assert took < 1


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_of_exactly_max_bytes_is_accepted(lab: HttpsLab, chunked: bool) -> None:
    url = lab.good.route("/exact", Route(body=b"10.20.0.5\n", repeat=1000, chunked=chunked))
    assert source(lab, url, max_bytes=10_000).fetch().accepted == 1000


def test_a_truncated_body_is_an_error_not_a_shorter_list(lab: HttpsLab) -> None:
    url = lab.good.route("/cut", Route(body=b"10.20.0.5\n" * 100, content_length=5000))
    message, _ = failure(source(lab, url).fetch)
    assert message == f"{url}: the connection closed after 1000 of 5000 bytes"


# --- TLS ---


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ("other_ca", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("wrong_host", "IP address mismatch, certificate is not valid for '127.0.0.1'."),
    ],
)
def test_a_bad_certificate_is_refused(lab: HttpsLab, server: str, reason: str) -> None:
    bad = getattr(lab, server)
    bad.route("/export.txt", Route(body=LINES))
    url = bad.url("/export.txt")
    message, _ = failure(source(lab, url).fetch)
    assert message == (
        f"{url}: certificate verify failed: {reason} "
        f"(127.0.0.1:{bad.port}, trusting only the CA in {lab.ca.ca_file})"
    )
    assert bad.requests() == []  # nothing was sent over the untrusted connection


def test_the_system_store_does_not_trust_the_lab_ca(lab: HttpsLab) -> None:
    url = lab.good.route("/export.txt", Route(body=LINES))
    message, _ = failure(source(lab, url, ca_file=None).fetch)
    assert "certificate verify failed: unable to get local issuer certificate" in message
    assert message.endswith("trusting the system's CA store; set ca_file for a private CA)")


def test_an_unusable_ca_file(lab: HttpsLab, tmp_path: Path) -> None:
    url = lab.good.route("/export.txt", Route(body=LINES))
    (tmp_path / "empty.pem").write_text("")
    message, _ = failure(source(lab, url, ca_file=tmp_path / "missing.pem").fetch)
    assert (
        message == f"{url}: cannot read ca_file {tmp_path}/missing.pem: No such file or directory"
    )
    message, _ = failure(source(lab, url, ca_file=tmp_path / "empty.pem").fetch)
    assert message.startswith(f"{url}: ca_file {tmp_path}/empty.pem holds no usable PEM")


def test_https_to_a_plain_http_server(lab: HttpsLab) -> None:
    url = lab.plain.url("/export.txt").replace("http://", "https://")
    message, _ = failure(source(lab, url).fetch)
    assert message.endswith("failed: WRONG_VERSION_NUMBER (is it a plain HTTP server?)")


# --- plain http and redirects ---


def test_plain_http_is_refused_unless_allow_insecure(lab: HttpsLab) -> None:
    url = lab.plain.route("/export.txt", Route(body=LINES))
    message, _ = failure(source(lab, url).fetch)
    assert message.startswith(f"{url}: plain http:// is refused (set allow_insecure = true")
    assert lab.plain.requests() == []
    assert source(lab, url, allow_insecure=True).fetch().accepted == 4


def test_a_redirect_from_https_to_http_is_refused(lab: HttpsLab) -> None:
    target = lab.plain.route("/export.txt", Route(body=LINES))
    url = lab.good.route("/moved", Route(status=302, headers={"Location": target + "?sig=x"}))
    message, _ = failure(source(lab, url).fetch)
    assert message.startswith(
        f"{url}: redirected to {lab.plain.url('/export.txt')}?...: plain http:// is refused"
    )
    assert lab.plain.requests() == []
    assert source(lab, url, allow_insecure=True).fetch().accepted == 4


def test_redirects_are_followed_and_limited(lab: HttpsLab) -> None:
    lab.good.route("/export.txt", Route(body=LINES))
    url = lab.good.route("/old", Route(status=301, headers={"Location": "/export.txt"}))
    assert source(lab, url).fetch().accepted == 4
    loop = lab.good.route("/loop", Route(status=307, headers={"Location": "/loop"}))
    message, _ = failure(source(lab, loop).fetch)
    assert message == f"{loop}: more than 5 redirects"
    assert len(lab.good.requests("/loop")) == 6


# --- bearer tokens ---


def test_the_bearer_token_is_read_from_token_file_at_each_fetch(
    lab: HttpsLab, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-1\n")
    url = lab.good.route("/private.txt", Route(body=LINES, token="s3cret-1"))
    mdm = source(lab, url, token_file=token_file)
    assert mdm.fetch().accepted == 4
    assert lab.good.requests()[0].headers["authorization"] == "Bearer s3cret-1"
    token_file.write_text("rotated-2")  # a rotated token, picked up without a reload
    message, _ = failure(mdm.fetch)
    assert message == f"{url}: HTTP 401 Unauthorized"
    assert "rotated-2" not in message
    assert lab.good.requests()[1].headers["authorization"] == "Bearer rotated-2"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read token_file {path}: No such file or directory"),
        ("\n  \n", "token_file {path} is empty"),
        ("two\nlines", "token_file {path} must hold one token on one line"),
        ("caf\u00e9", "token_file {path} holds non-ASCII bytes"),
    ],
)
def test_an_unusable_token_file_fails_before_any_request(
    lab: HttpsLab, tmp_path: Path, content: str | None, problem: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    url = lab.good.route("/private.txt", Route(body=LINES, token="s3cret"))
    message, _ = failure(source(lab, url, token_file=token_file).fetch)
    assert message.startswith(f"{url}: " + problem.format(path=token_file))
    assert lab.good.requests() == []


def test_the_token_never_follows_a_redirect_to_another_origin(
    lab: HttpsLab, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret")
    elsewhere = lab.good.route("/bucket/export.txt", Route(body=LINES))
    elsewhere = elsewhere.replace("127.0.0.1", "localhost")  # another origin, same server
    url = lab.good.route("/export", Route(status=302, headers={"Location": elsewhere}))
    assert source(lab, url, token_file=token_file).fetch().accepted == 4
    asked, followed = lab.good.requests()
    assert asked.headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in followed.headers


# --- the Atlassian feed ---


def test_the_atlassian_feed_over_https(lab: HttpsLab) -> None:
    headers = {"ETag": '"feed-1"', "Content-Type": "application/json"}
    url = lab.good.route("/", Route(body=SAMPLE_TEXT.encode(), headers=headers))
    feed = FeedConfig(options(lab, url), ("bitbucket",), ("ingress",), interval=3600.0)
    ranges = FeedSource(feed)
    result = ranges.fetch()
    assert result.entries == BITBUCKET_INGRESS
    assert result.accepted == BITBUCKET_INGRESS_ACCEPTED
    assert result.rejected_count == len(BITBUCKET_INGRESS_REJECTED)
    assert (result.origin, result.refresh_in) == (url, 3600.0)
    assert ranges.fetch() is result
    assert ranges.last_status == 304
    assert lab.good.requests("/")[1].headers["if-none-match"] == '"feed-1"'


def test_a_feed_error_page_is_a_source_error(lab: HttpsLab) -> None:
    url = lab.good.route("/", Route(body=b"<html>maintenance</html>"))
    feed = FeedConfig(options(lab, url), ("bitbucket",), ("ingress",))
    message, _ = failure(FeedSource(feed).fetch)
    assert message.startswith(f"{url}: the feed is not valid JSON: ")
