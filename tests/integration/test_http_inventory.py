"""An inventory over HTTPS, against a real TLS server on 127.0.0.1 (no root needed).

It is fetched at its interval with conditional requests and a bearer token, and an
inventory that stops answering keeps its last good records until max_stale, then
refuses everyone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.https import HttpsLab, Route, https_lab
from repogate.config.schema import HttpOptions, Inventory
from repogate.errors import SourceError
from repogate.sources.devices.source import InventoryReader

CSV = b"device,compliant,owner,openvpn\nC02ALICE,true,alice,alice-laptop\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsLab]:
    with https_lab(tmp_path_factory.mktemp("tls")) as started:
        yield started


def reader(lab: HttpsLab, url: str, token_file: Path, *, max_stale: float) -> InventoryReader:
    http = HttpOptions(url, ca_file=lab.ca.ca_file, token_file=token_file, timeout=2.0)
    return InventoryReader(Inventory("mdm", "csv", http=http, interval=60.0), max_stale)


def test_an_https_inventory_is_read_with_its_token_and_revalidated(
    servers: HttpsLab, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    url = servers.good.route(
        "/devices.csv", Route(body=CSV, token="s3cret", headers={"ETag": '"v1"'})
    )
    inventory = reader(servers, url, token, max_stale=3600)
    first = inventory.current(now=1000.0)
    assert [r.device for r in first.records] == ["C02ALICE"]
    assert inventory.current(now=1010.0) is first  # within its interval: not fetched
    again = inventory.current(now=1100.0)  # due: a conditional request, 304
    assert [r.device for r in again.records] == ["C02ALICE"] and again.read_at == 1100.0
    seen = servers.good.requests("/devices.csv")
    assert len(seen) == 2
    assert seen[1].headers.get("if-none-match") == '"v1"'
    servers.good.reset()


def test_a_failing_https_inventory_keeps_its_records_until_max_stale(
    servers: HttpsLab, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    url = servers.good.route("/devices.csv", Route(body=CSV, token="s3cret"))
    inventory = reader(servers, url, token, max_stale=300)
    inventory.current(now=1000.0)
    servers.good.route("/devices.csv", Route(status=500, body=b"down"))
    kept = inventory.current(now=1100.0)  # failing, within max_stale: last good records
    assert [r.device for r in kept.records] == ["C02ALICE"] and inventory.failure
    asked = len(servers.good.requests("/devices.csv"))
    inventory.current(now=1110.0)  # failing: asked again only at its interval
    assert len(servers.good.requests("/devices.csv")) == asked
    with pytest.raises(SourceError, match="past max_stale"):
        inventory.current(now=1400.0)
    servers.good.reset()
