"""Real WireGuard tunnels between lab namespaces, with Debian's userspace `wireguard-go`.

    with start_wireguard_go(server_ns, "rg1a2b3cwgs", workdir) as server:
        server_keys, client_keys = (generate_keypair(workdir, n) for n in ("s", "c"))
        peer = WireguardPeerConfig(client_keys.public, ["10.9.0.2/32"])
        configure(server_ns, server.ifname, server_keys, address=["10.9.0.1/24"], peers=[peer])

`wireguard-go -f` stays in the foreground, so the process we start is the one we stop (by
default it forks a daemon we would have to find again). Its UAPI socket is a file,
`/var/run/wireguard/<ifname>.sock`, shared by every namespace: interface names must be
unique across the host, not only per namespace, hence the run's tag in them. The tunnel
interface itself lives in the namespace wireguard-go runs in. Configuration goes through
`wg set` with argv lists; private keys through mode-0600 files, never argv.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lab.errors import LabError
from lab.netns import in_netns, run
from lab.server import ServerProcess

WIREGUARD_GO = "wireguard-go"  # Debian package `wireguard-go`
WG = "wg"  # Debian package `wireguard-tools`
SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Keypair:
    """A private key (written to a 0600 file for `wg set`) and its base64 public key."""

    private_file: Path
    public: str


def generate_keypair(directory: Path, name: str) -> Keypair:
    """`wg genkey` / `wg pubkey`, the key kept in `directory/name.key` (mode 0600)."""
    private = run([WG, "genkey"]).stdout.strip()
    public = subprocess.run(
        [WG, "pubkey"], input=private, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
    path = directory / f"{name}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private + "\n")
    return Keypair(path, public)


@dataclass(frozen=True)
class WireguardPeerConfig:
    """A peer for `wg set`: its public key, allowed IPs and, for a client, the endpoint."""

    public_key: str
    allowed_ips: Sequence[str]
    endpoint: str | None = None


@dataclass
class WireguardProcess:
    """A running `wireguard-go -f <ifname>` in a namespace; stop it or use `with`."""

    process: ServerProcess
    ifname: str

    @property
    def socket_path(self) -> Path:
        return SOCKET_DIR / f"{self.ifname}.sock"

    def stop(self) -> None:
        """Terminate it; wireguard-go removes its socket and interface on the way out."""
        self.process.stop(timeout=5.0)

    def __enter__(self) -> WireguardProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_wireguard_go(netns: str, ifname: str, workdir: Path) -> WireguardProcess:
    """Start wireguard-go for `ifname` inside `netns` and wait for its UAPI socket."""
    if (SOCKET_DIR / f"{ifname}.sock").exists():
        raise LabError(f"{SOCKET_DIR / ifname}.sock exists: interface names must be unique")
    log_path = workdir / f"wireguard-go-{ifname}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            in_netns(netns, [WIREGUARD_GO, "-f", ifname]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
    started = WireguardProcess(ServerProcess(netns, proc, log_path), ifname)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not started.socket_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"wireguard-go {ifname} did not start: {log_path.read_text()}")
            time.sleep(0.02)
    except BaseException:
        started.stop()
        raise
    return started


def configure(
    netns: str,
    ifname: str,
    keys: Keypair,
    *,
    address: Sequence[str],
    peers: Sequence[WireguardPeerConfig],
    listen_port: int | None = None,
) -> None:
    """Set the key, port and peers with `wg set`, add addresses and bring the link up."""
    argv = [WG, "set", ifname, "private-key", str(keys.private_file)]
    if listen_port is not None:
        argv += ["listen-port", str(listen_port)]
    for peer in peers:
        argv += ["peer", peer.public_key, "allowed-ips", ",".join(peer.allowed_ips)]
        if peer.endpoint is not None:
            argv += ["endpoint", peer.endpoint]
    run(in_netns(netns, argv))
    for cidr in address:
        extra = ["nodad"] if ":" in cidr else []
        run(["ip", "-n", netns, "address", "add", cidr, "dev", ifname, *extra])
    run(["ip", "-n", netns, "link", "set", ifname, "up"])
