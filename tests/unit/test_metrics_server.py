"""The metrics endpoint: loopback HTTP, TLS and basic auth, on this prometheus-client."""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from repogate.config.schema import MetricsConfig
from repogate.daemon.metrics import Metrics
from repogate.daemon.metrics_server import MetricsError, MetricsServer


@pytest.fixture
def served() -> Iterator[list[MetricsServer]]:
    servers: list[MetricsServer] = []
    yield servers
    for server in servers:
        server.close()


def get(url: str, *, auth: str | None = None, context: ssl.SSLContext | None = None) -> str:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return str(response.read().decode())


def test_plain_http_on_loopback(served: list[MetricsServer]) -> None:
    server = MetricsServer(MetricsConfig(host="127.0.0.1", port=0), Metrics().wsgi_app())
    served.append(server)
    text = get(f"http://127.0.0.1:{server.port}/metrics")
    assert 'repogate_build_info{version="' in text
    assert 'repogate_dns_queries_total{result="timeout"} 0.0' in text  # created at zero


def test_basic_auth_refuses_without_the_password(
    served: list[MetricsServer], tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = MetricsConfig(
        host="127.0.0.1", port=0, basic_auth_user="prom", basic_auth_password_file=secret
    )
    server = MetricsServer(settings, Metrics().wsgi_app())
    served.append(server)
    url = f"http://127.0.0.1:{server.port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(url)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        get(url, auth="prom:wrong")
    assert "repogate_build_info" in get(url, auth="prom:s3cret")


def test_tls(served: list[MetricsServer], tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    settings = MetricsConfig(
        host="127.0.0.1", port=0, tls_cert_file=cert_file, tls_key_file=key_file
    )
    server = MetricsServer(settings, Metrics().wsgi_app())
    served.append(server)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    assert "repogate_build_info" in get(f"https://127.0.0.1:{server.port}/metrics", context=context)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match="cannot read"):
        MetricsServer(
            MetricsConfig(
                host="127.0.0.1",
                port=0,
                basic_auth_user="prom",
                basic_auth_password_file=tmp_path / "missing",
            ),
            Metrics().wsgi_app(),
        )
    with pytest.raises(MetricsError, match="TLS certificate"):
        MetricsServer(
            MetricsConfig(
                host="127.0.0.1",
                port=0,
                tls_cert_file=tmp_path / "nope.pem",
                tls_key_file=tmp_path / "nope.key",
            ),
            Metrics().wsgi_app(),
        )
