"""WireGuard address map: which peer keys hold which allowed IPs, and who shook hands lately.

A WireGuard peer may only send from its allowed IPs (cryptokey routing), so a peer that
completed a handshake recently is present at exactly those addresses. Two ways to ask:

- the UAPI socket of userspace implementations (`/var/run/wireguard/<iface>.sock`, Debian's
  wireguard-go): the text protocol `get=1`, keys in hex, read with a deadline;
- the kernel module, over generic netlink through pyroute2's `WireGuard`, only when there is
  no UAPI socket. This host has no kernel WireGuard, so that path is tested on decoded
  messages shaped like pyroute2's (both 0.7 and 0.9 expose `get_attr`), not on a kernel.

A peer whose latest handshake is older than `max_handshake_age`, or that never shook hands,
is not a sighting: it is listed in `absent` (for status and explain, never admitted), so
people can see "configured, last handshake 3 h ago" without a second read.

WireGuard rekeys every 2 minutes while traffic flows and a handshake is only renewed by
traffic, so an idle but connected peer looks absent after `max_handshake_age`; 180 s or
more (REKEY_AFTER_TIME + jitter) avoids flapping active peers.
"""

from __future__ import annotations

import base64
import binascii
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repogate import rtnl
from repogate.addresses import InvalidEntryError, Rejected, element_order, parse_entry
from repogate.errors import SourceError
from repogate.sources.devices import Sighting

SOCKET_DIR = Path("/var/run/wireguard")
MAX_REPLY = 16 * 1024 * 1024  # ~60 k peers with a few allowed IPs each
# A peer routing a whole network is a site, not a device; /0 would admit everybody.
MIN_PREFIX: Mapping[int, int] = {4: 24, 6: 64}


@dataclass(frozen=True)
class WireguardPeer:
    """One configured peer, whichever way it was read."""

    public_key: str  # base64, as `wg` shows it
    allowed_ips: tuple[str, ...] = ()  # as the implementation gave them ("10.8.0.2/32")
    last_handshake: float | None = None  # epoch seconds; None: never


@dataclass(frozen=True)
class WireguardMap:
    """Present peers as sightings, configured-but-absent ones for people, bad entries."""

    sightings: tuple[Sighting, ...]
    absent: tuple[Sighting, ...]
    rejected: tuple[Rejected, ...]


KernelReader = Callable[[str], list[WireguardPeer]]


def read_wireguard(
    interface: str,
    *,
    max_handshake_age: float,
    now: float,
    socket_dir: Path = SOCKET_DIR,
    timeout: float = 2.0,
    kernel: KernelReader | None = None,
    min_prefix: Mapping[int, int] = MIN_PREFIX,
) -> WireguardMap:
    """Read `interface`'s peers: from its UAPI socket if there is one, else from the kernel.

    Raises SourceError when neither answers: an unreadable map must keep what is enforced
    rather than look like "nobody is present".
    """
    path = socket_dir / f"{interface}.sock"
    if path.exists():
        peers = read_uapi(path, timeout=timeout)
    else:
        try:
            peers = (kernel or read_kernel)(interface)
        except SourceError as exc:
            raise SourceError(
                f"wireguard {interface}: no UAPI socket at {path}, and {exc}"
            ) from exc
    return build_map(
        interface, peers, max_handshake_age=max_handshake_age, now=now, min_prefix=min_prefix
    )


def build_map(
    interface: str,
    peers: Iterable[WireguardPeer],
    *,
    max_handshake_age: float,
    now: float,
    min_prefix: Mapping[int, int] = MIN_PREFIX,
) -> WireguardMap:
    """Turn peers into sightings (recent handshake) and absentees; reject unusable allowed IPs."""
    sightings: list[Sighting] = []
    absent: list[Sighting] = []
    rejected: list[Rejected] = []
    for peer in peers:
        where = f"wireguard {interface} peer {peer.public_key}"
        addresses: set[str] = set()
        for raw in peer.allowed_ips:
            try:
                entry = parse_entry(raw)
            except InvalidEntryError as exc:
                rejected.append(Rejected(where, raw, str(exc)))
                continue
            limit = min_prefix.get(entry.family)
            if limit is not None and entry.prefixlen < limit:
                reason = f"allowed IP {raw!r} is broader than /{limit}: a site, not a device"
                rejected.append(Rejected(where, raw, reason))
                continue
            addresses.add(entry.text)
        ordered = tuple(sorted(addresses, key=element_order))
        if peer.last_handshake is None:
            absent.append(_sighting(interface, peer, ordered, "never shook hands"))
            continue
        age = max(0.0, now - peer.last_handshake)
        detail = f"handshake {age:.0f} s ago"
        if age > max_handshake_age:
            absent.append(_sighting(interface, peer, ordered, detail))
        elif ordered:
            sightings.append(_sighting(interface, peer, ordered, detail))
    return WireguardMap(tuple(sightings), tuple(absent), tuple(rejected))


def _sighting(
    interface: str, peer: WireguardPeer, addresses: tuple[str, ...], detail: str
) -> Sighting:
    return Sighting("wireguard", peer.public_key, addresses, detail, interface)


# -- UAPI (wireguard-go) -----------------------------------------------------------------------


def read_uapi(path: Path, *, timeout: float = 2.0) -> list[WireguardPeer]:
    """Ask a UAPI socket for its configuration (`get=1`) and parse the peers.

    The whole exchange has one deadline, so a wedged daemon cannot stall a refresh.
    The reply carries the interface's private key: it is read past, never kept or logged.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"get=1\n\n")
            while not b"".join(chunks[-2:]).endswith(b"\n\n"):
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise SourceError(f"{path}: reply larger than {MAX_REPLY} bytes")
    except TimeoutError as exc:
        raise SourceError(f"{path}: no complete answer within {timeout:g} s") from exc
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from exc
    return parse_uapi(b"".join(chunks).decode("ascii", errors="replace"), where=str(path))


def parse_uapi(text: str, *, where: str) -> list[WireguardPeer]:
    """Parse a `get=1` reply: `public_key=` starts a peer, `errno=` ends the reply.

    A reply without `errno=0` is an error (the daemon refused or the connection broke).
    """
    peers: list[WireguardPeer] = []
    key: str | None = None
    allowed: list[str] = []
    handshake: float | None = None
    errno: str | None = None

    def finish() -> None:
        if key is not None:
            peers.append(WireguardPeer(key, tuple(allowed), handshake))

    for line in text.split("\n"):
        name, sep, value = line.partition("=")
        if not sep:
            continue
        if name == "public_key":
            finish()
            key, allowed, handshake = _hex_to_base64(value, where), [], None
        elif name == "allowed_ip" and key is not None:
            allowed.append(value)
        elif name == "last_handshake_time_sec" and key is not None:
            seconds = int(value) if value.isdigit() else 0
            handshake = float(seconds) if seconds else None  # 0: never
        elif name == "errno":
            errno = value
            break
    if errno is None:
        raise SourceError(f"{where}: the reply ended without errno= (cut short?)")
    if errno != "0":
        raise SourceError(f"{where}: the daemon answered errno={errno}")
    finish()
    return peers


def _hex_to_base64(value: str, where: str) -> str:
    try:
        raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError) as exc:
        raise SourceError(f"{where}: public_key {value!r} is not hex") from exc
    if len(raw) != 32:
        raise SourceError(f"{where}: public_key {value!r} is not 32 bytes")
    return base64.b64encode(raw).decode()


# -- kernel (generic netlink through pyroute2) -------------------------------------------------


def read_kernel(interface: str) -> list[WireguardPeer]:
    """Dump the kernel's peers of `interface` through pyroute2 (needs CAP_NET_ADMIN, like
    `wg show`). Imported here: only hosts with kernel WireGuard pay for pyroute2's import."""
    try:
        wg = rtnl.wireguard()
    except ImportError as exc:
        raise SourceError("pyroute2 has no WireGuard support") from exc
    except Exception as exc:  # pyroute2: NetlinkError, OSError, and worse
        raise SourceError(f"the kernel has no WireGuard netlink family ({exc})") from exc
    try:
        messages = list(wg.info(interface))
    except Exception as exc:  # NetlinkError (ENODEV), OSError
        raise SourceError(f"the kernel has no WireGuard interface {interface!r} ({exc})") from exc
    finally:
        wg.close()
    return peers_from_netlink(messages)


@dataclass
class _Merge:
    allowed: list[str] = field(default_factory=list)
    handshake: float | None = None


def peers_from_netlink(messages: Iterable[Any]) -> list[WireguardPeer]:
    """Convert pyroute2's decoded WG_CMD_GET_DEVICE dump into peers.

    The kernel splits a peer whose allowed IPs overflow a message: the next message repeats
    only its public key and the rest of its allowed IPs, so peers are merged by key.
    """
    merged: dict[str, _Merge] = {}
    for message in messages:
        for peer in message.get_attr("WGDEVICE_A_PEERS") or ():
            raw_key = peer.get_attr("WGPEER_A_PUBLIC_KEY")
            if raw_key is None:
                continue
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            entry = merged.setdefault(key, _Merge())
            stamp = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if stamp is not None and stamp.get("tv_sec"):
                entry.handshake = float(stamp["tv_sec"])
            for allowed in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                if isinstance(allowed, Mapping) and isinstance(allowed.get("addr"), str):
                    entry.allowed.append(allowed["addr"])
    return [WireguardPeer(key, tuple(m.allowed), m.handshake) for key, m in merged.items()]
