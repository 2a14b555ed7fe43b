"""WireGuard map: UAPI replies captured from Debian's wireguard-go, and pyroute2-shaped dumps."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repogate.errors import SourceError
from repogate.sources.devices.wireguard import (
    WireguardPeer,
    build_map,
    parse_uapi,
    peers_from_netlink,
    read_wireguard,
)

# `get=1` on wireguard-go v0.0.20220316 (Debian 12) after one handshake; keys are lab keys.
CAPTURED = """\
private_key=e8305e49f6c0bb58570bc35434f3d66b61b02c15a39ba55bfc0867ff6a3ed66a
listen_port=51820
public_key=6890b5f8b3dffc72136fb396dbfec85d9ba3424106371e18e89858064f15f82d
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
allowed_ip=10.9.0.3/32
public_key=deba94b5f825ebcbfcf4e7280d391673c71477f3000547d534f9fe8f9956a04d
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
endpoint=192.0.2.2:60761
last_handshake_time_sec=1795954380
last_handshake_time_nsec=221083179
tx_bytes=172
rx_bytes=244
persistent_keepalive_interval=0
allowed_ip=10.9.0.2/32
allowed_ip=fd00:9::2/128
errno=0

"""
CLIENT = "3rqUtfgl68v89OcoDTkWc8cUd/MABUfVNPn+j5lWoE0="  # as `wg show` printed it
NEVER = "aJC1+LPf/HITb7OW2/7IXZujQkEGNx4Y6JhYBk8V+C0="
NOW = 1795954382.0


def test_captured_reply_gives_base64_keys_addresses_and_handshakes() -> None:
    peers = parse_uapi(CAPTURED, where="wg0.sock")
    assert peers == [
        WireguardPeer(NEVER, ("10.9.0.3/32",), None),
        WireguardPeer(CLIENT, ("10.9.0.2/32", "fd00:9::2/128"), 1795954380.0),
    ]
    result = build_map("wg0", peers, max_handshake_age=180, now=NOW)
    (seen,) = result.sightings
    assert (seen.kind, seen.identity, seen.addresses, seen.interface) == (
        "wireguard",
        CLIENT,
        ("10.9.0.2", "fd00:9::2"),
        "wg0",
    )
    assert seen.detail == "handshake 2 s ago"
    assert [(a.identity, a.detail) for a in result.absent] == [(NEVER, "never shook hands")]
    assert result.rejected == ()


def test_private_key_is_never_kept() -> None:
    peers = parse_uapi(CAPTURED, where="wg0.sock")
    assert "e8305e49" not in repr(peers)


def test_old_handshake_is_absent_not_seen() -> None:
    peers = [WireguardPeer(CLIENT, ("10.9.0.2/32",), NOW - 181)]
    result = build_map("wg0", peers, max_handshake_age=180, now=NOW)
    assert result.sightings == ()
    assert [a.detail for a in result.absent] == ["handshake 181 s ago"]


def test_networks_kept_broad_and_bad_allowed_ips_rejected() -> None:
    peer = WireguardPeer(
        CLIENT,
        ("10.9.1.0/24", "0.0.0.0/0", "::/0", "10.9.0.5/24", "fd00:9::/64", "garbage"),
        NOW,
    )
    result = build_map("wg0", [peer], max_handshake_age=180, now=NOW)
    assert result.sightings[0].addresses == ("10.9.1.0/24", "fd00:9::/64")
    reasons = [r.reason for r in result.rejected]
    assert len(reasons) == 4
    assert "a site, not a device" in reasons[0] and "a site, not a device" in reasons[1]
    assert "host bits set" in reasons[2] and "not an IP address" in reasons[3]
    assert all(r.where == f"wireguard wg0 peer {CLIENT}" for r in result.rejected)


def test_peer_with_no_allowed_ips_is_not_a_sighting() -> None:
    result = build_map("wg0", [WireguardPeer(CLIENT, (), NOW)], max_handshake_age=180, now=NOW)
    assert result.sightings == () and result.absent == ()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("public_key=00\nerrno=0\n\n", "not 32 bytes"),
        ("public_key=zz\nerrno=0\n\n", "not hex"),
        ("errno=19\n\n", "errno=19"),
        (CAPTURED[:300], "without errno"),
        ("", "without errno"),
    ],
)
def test_bad_replies_raise(reply: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_uapi(reply, where="wg0.sock")


@pytest.fixture
def uapi(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A UAPI socket answering the captured reply in small pieces, recording requests."""
    path = tmp_path / "wg7.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    requests: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            requests.append(conn.recv(100))
            data = CAPTURED.encode()
            for start in range(0, len(data), 64):
                conn.sendall(data[start : start + 64])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield tmp_path, requests
    server.close()
    thread.join(timeout=2)


def test_read_through_a_socket(uapi: tuple[Path, list[bytes]]) -> None:
    directory, requests = uapi
    result = read_wireguard("wg7", max_handshake_age=180, now=NOW, socket_dir=directory)
    assert requests == [b"get=1\n\n"]
    assert [s.identity for s in result.sightings] == [CLIENT]


def test_silent_socket_times_out(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "wg8.sock"))
    server.listen(1)
    with server, pytest.raises(SourceError, match="no complete answer"):
        read_wireguard("wg8", max_handshake_age=1, now=NOW, socket_dir=tmp_path, timeout=0.2)


def test_refusing_socket_is_a_source_error(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "wg9.sock"))  # bound, never listening: connection refused
    with stale, pytest.raises(SourceError, match=r"wg9\.sock"):
        read_wireguard("wg9", max_handshake_age=1, now=NOW, socket_dir=tmp_path)


def test_without_socket_the_kernel_is_asked(tmp_path: Path) -> None:
    asked: list[str] = []

    def kernel(interface: str) -> list[WireguardPeer]:
        asked.append(interface)
        return [WireguardPeer(CLIENT, ("10.9.0.2/32",), NOW)]

    result = read_wireguard(
        "wg0", max_handshake_age=180, now=NOW, socket_dir=tmp_path, kernel=kernel
    )
    assert asked == ["wg0"] and result.sightings[0].addresses == ("10.9.0.2",)

    def no_kernel(interface: str) -> list[WireguardPeer]:
        raise SourceError(f"the kernel has no WireGuard interface {interface!r}")

    with pytest.raises(SourceError, match=r"no UAPI socket at .*wg0\.sock, and the kernel"):
        read_wireguard("wg0", max_handshake_age=1, now=NOW, socket_dir=tmp_path, kernel=no_kernel)


class _Nla(dict[str, Any]):
    """Stands in for a decoded pyroute2 nla: a dict with `attrs` and `get_attr`."""

    def get_attr(self, name: str) -> Any:
        return next((value for key, value in self.get("attrs", []) if key == name), None)


def _allowed(addr: str) -> _Nla:
    return _Nla(attrs=[("WGALLOWEDIP_A_CIDR_MASK", 32)], addr=addr)


def test_netlink_dump_merges_a_peer_split_over_messages() -> None:
    raw_key = base64.b64decode(CLIENT)
    key = base64.b64encode(raw_key)  # pyroute2 decodes keys to base64 bytes
    first = _Nla(
        attrs=[
            (
                "WGDEVICE_A_PEERS",
                [
                    _Nla(
                        attrs=[
                            ("WGPEER_A_PUBLIC_KEY", key),
                            ("WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1795954380, "tv_nsec": 5}),
                            ("WGPEER_A_ALLOWEDIPS", [_allowed("10.9.0.2/32")]),
                        ]
                    ),
                    _Nla(
                        attrs=[
                            ("WGPEER_A_PUBLIC_KEY", base64.b64encode(bytes(32))),
                            ("WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}),
                        ]
                    ),
                ],
            )
        ]
    )
    # The kernel continues an overflowing peer with only its key and more allowed IPs.
    second = _Nla(
        attrs=[
            (
                "WGDEVICE_A_PEERS",
                [
                    _Nla(
                        attrs=[
                            ("WGPEER_A_PUBLIC_KEY", key),
                            ("WGPEER_A_ALLOWEDIPS", [_allowed("fd00:9::2/128")]),
                        ]
                    )
                ],
            )
        ]
    )
    assert peers_from_netlink([first, second, _Nla(attrs=[])]) == [
        WireguardPeer(CLIENT, ("10.9.0.2/32", "fd00:9::2/128"), 1795954380.0),
        WireguardPeer(base64.b64encode(bytes(32)).decode(), (), None),
    ]
