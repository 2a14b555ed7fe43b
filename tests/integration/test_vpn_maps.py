"""The address maps against real VPN servers: wireguard-go and OpenVPN in namespaces.

Each test builds its own namespaces (`rg<6 hex>-<role>`, a veth between them, nothing else)
and deletes them, killing whatever still runs inside, even when the test fails.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.openvpn import make_pki, start_openvpn_client, start_openvpn_server
from lab.wireguard import WireguardPeerConfig, configure, generate_keypair, start_wireguard_go
from repogate.errors import SourceError
from repogate.sources.devices.openvpn import OpenvpnManagement, read_status_file
from repogate.sources.devices.wireguard import read_wireguard


def _missing(*tools: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    absent = [tool for tool in tools if shutil.which(tool) is None]
    return f"needs {', '.join(absent)}" if absent else None


WG_TOOLS = ("ip", "wireguard-go", "wg")
OVPN_TOOLS = ("ip", "openvpn", "openssl")
pytestmark = pytest.mark.root

# A TCP connect to the far end of the tunnel: refused (RST) proves packets went both ways.
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(5)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    sys.exit(0)
sys.exit(1)
"""


@pytest.fixture
def pair() -> Iterator[tuple[str, str, str]]:
    """Two fresh namespaces joined by a veth: (tag, server ns 192.0.2.1, client ns 192.0.2.2)."""
    tag = netns.new_tag()
    server, client = f"{tag}-srv", f"{tag}-cli"
    made: list[str] = []
    try:
        for name in (server, client):
            netns.add_netns(name)
            made.append(name)
        netns.add_veth(server, "veth0", client, "veth0")
        for name, address in ((server, "192.0.2.1/24"), (client, "192.0.2.2/24")):
            netns.add_address(name, "veth0", address)
            netns.link_up(name, "veth0")
        yield tag, server, client
    finally:
        for name in made:
            netns.delete_netns(name)


@pytest.mark.skipif(_missing(*WG_TOOLS) is not None, reason=_missing(*WG_TOOLS) or "")
def test_wireguard_go_peer_seen_after_handshake(pair: tuple[str, str, str], tmp_path: Path) -> None:
    tag, server_ns, client_ns = pair
    keys = {name: generate_keypair(tmp_path, name) for name in ("server", "client", "never")}
    with (
        start_wireguard_go(server_ns, f"{tag}s", tmp_path) as server,
        start_wireguard_go(client_ns, f"{tag}c", tmp_path) as client,
    ):
        configure(
            server_ns,
            server.ifname,
            keys["server"],
            address=["10.9.0.1/24", "fd00:9::1/64"],
            listen_port=51820,
            peers=[
                WireguardPeerConfig(keys["client"].public, ["10.9.0.2/32", "fd00:9::2/128"]),
                WireguardPeerConfig(keys["never"].public, ["10.9.0.3/32"]),
            ],
        )
        configure(
            client_ns,
            client.ifname,
            keys["client"],
            address=["10.9.0.2/24", "fd00:9::2/64"],
            peers=[
                WireguardPeerConfig(
                    keys["server"].public, ["10.9.0.0/24", "fd00:9::/64"], "192.0.2.1:51820"
                )
            ],
        )
        before = read_wireguard(server.ifname, max_handshake_age=180, now=time.time())
        assert before.sightings == ()
        assert {s.identity for s in before.absent} == {keys["client"].public, keys["never"].public}

        connect = [sys.executable, "-c", CONNECT, "10.9.0.1"]
        netns.run(netns.in_netns(client_ns, connect), timeout=10)

        seen = read_wireguard(server.ifname, max_handshake_age=180, now=time.time())
        assert [(s.identity, s.addresses, s.interface) for s in seen.sightings] == [
            (keys["client"].public, ("10.9.0.2", "fd00:9::2"), server.ifname)
        ]
        assert seen.sightings[0].detail.startswith("handshake ")
        assert [(s.identity, s.detail) for s in seen.absent] == [
            (keys["never"].public, "never shook hands")
        ]
        assert seen.rejected == ()

        later = read_wireguard(server.ifname, max_handshake_age=180, now=time.time() + 600)
        assert later.sightings == ()  # the same handshake, judged ten minutes on: too old

    with pytest.raises(SourceError, match="no UAPI socket"):
        read_wireguard(server.ifname, max_handshake_age=180, now=time.time())


def _status_has(*names: str, absent: tuple[str, ...] = ()) -> Callable[[str], bool]:
    """A status text test: every name in a CLIENT_LIST row, none of `absent`."""

    def check(text: str) -> bool:
        rows = [line for line in text.splitlines() if line.startswith("CLIENT_LIST")]
        return all(any(f"{n}," in r or f"{n}\t" in r for r in rows) for n in names) and not any(
            f"{n}," in r or f"{n}\t" in r for n in absent for r in rows
        )

    return check


@pytest.mark.skipif(_missing(*OVPN_TOOLS) is not None, reason=_missing(*OVPN_TOOLS) or "")
@pytest.mark.parametrize("status_version", [2, 3])
def test_openvpn_clients_seen_then_killed(
    pair: tuple[str, str, str], tmp_path: Path, status_version: int
) -> None:
    _tag, server_ns, client_ns = pair
    pki = make_pki(tmp_path / "pki", ["alice-laptop", "bob-laptop"])
    pool_v4, pool_v6 = ipaddress.ip_network("10.8.0.0/24"), ipaddress.ip_network("fd00:8::/64")
    with (
        start_openvpn_server(
            server_ns, tmp_path, pki, local="192.0.2.1", status_version=status_version
        ) as server,
        start_openvpn_client(client_ns, tmp_path, pki, "alice-laptop", remote="192.0.2.1"),
        start_openvpn_client(client_ns, tmp_path, pki, "bob-laptop", remote="192.0.2.1") as bob,
    ):
        assert server.status_path is not None and server.management is not None
        server.wait_for_status(_status_has("alice-laptop", "bob-laptop"))
        status = read_status_file(server.status_path, now=time.time(), max_age=30, interface="tun0")
        assert status.complete and status.rejected_count == 0
        by_name = {s.identity: s for s in status.sightings}
        assert sorted(by_name) == ["alice-laptop", "bob-laptop"]
        for sighting in by_name.values():
            v4, v6 = (ipaddress.ip_address(a) for a in sighting.addresses)
            assert v4 in pool_v4 and v6 in pool_v6 and sighting.interface == "tun0"
            assert "from 192.0.2.2:" in sighting.detail

        management = OpenvpnManagement(server.management, timeout=5)
        live = management.status()
        assert {s.identity: s.addresses for s in live.sightings} == {
            name: s.addresses for name, s in by_name.items()
        }

        assert management.kill("alice-laptop") == 1
        assert management.kill("nobody-laptop") == 0
        server.wait_for_status(_status_has("bob-laptop", absent=("alice-laptop",)))
        after = read_status_file(server.status_path, now=time.time(), max_age=30)
        assert [s.identity for s in after.sightings] == ["bob-laptop"]

        (bob_row,) = [c for c in after.clients if c.common_name == "bob-laptop"]
        assert bob_row.client_id is not None
        management.client_kill(bob_row.client_id)  # HALT: the client exits, no reconnect
        bob.process.proc.wait(timeout=10)
        server.wait_for_status(_status_has(absent=("bob-laptop",)))
