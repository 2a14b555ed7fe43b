"""A real OpenVPN server and clients in lab namespaces, with a throwaway PKI.

    pki = make_pki(workdir / "pki", ["alice-laptop", "bob-laptop"])
    with start_openvpn_server(server_ns, workdir, pki, local="192.0.2.1") as server:
        with start_openvpn_client(client_ns, workdir, pki, "alice-laptop", remote="192.0.2.1"):
            text = server.wait_for_status(lambda text: "alice-laptop" in text)

Debian's `openvpn` runs in the foreground (no `--daemon`), so the process we start is the
process we stop; `ip netns exec` execs, so its pid is openvpn's. The status file and the
management socket are plain files: the host reads them whatever namespace the server runs in.
The PKI is EC P-256 and made by `openssl` in well under a second (RSA would take seconds);
`dh none` then selects ECDHE only. Everything runs from argv lists, never a shell.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lab.errors import LabError
from lab.netns import in_netns, run
from lab.server import ServerProcess

OPENVPN = "openvpn"  # Debian package `openvpn`
OPENSSL = "openssl"
START_TIMEOUT = 20.0
READY = "Initialization Sequence Completed"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    """Paths of a throwaway CA, its server certificate and one certificate per client."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client_cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def make_pki(directory: Path, clients: Sequence[str], *, days: int = 2) -> Pki:
    """Make a CA, a server certificate (serverAuth) and client certificates (clientAuth).

    The extended key usages matter: clients check `remote-cert-tls server`, so a server
    certificate without serverAuth would be refused, as a real deployment would refuse it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    run(
        [
            *(OPENSSL, "req", "-x509", *_EC, "-keyout", str(ca_key), "-out", str(ca)),
            *("-subj", "/CN=repogate-lab-ca", "-days", str(days)),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ]
    )
    for name, usage in [("server", "serverAuth"), *((client, "clientAuth") for client in clients)]:
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = directory / f"{name}.ext"
        ext.write_text(f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n")
        run([OPENSSL, "req", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"])
        run(
            [
                *(OPENSSL, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key)),
                *("-CAcreateserial", "-out", str(cert), "-days", str(days), "-extfile", str(ext)),
            ]
        )
    return Pki(directory, ca, directory / "server.crt", directory / "server.key")


@dataclass
class OpenvpnProcess:
    """A running openvpn (server or client): stop it with `stop()` or a `with` block."""

    process: ServerProcess
    config: Path
    status_path: Path | None = None
    management: Path | None = None

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def stop(self) -> None:
        self.process.stop(timeout=5.0)

    def __enter__(self) -> OpenvpnProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for_status(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """Wait until the status file's text satisfies `predicate`; return that text."""
        if self.status_path is None:
            raise LabError("this openvpn writes no status file")
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            if self.status_path.exists():
                text = self.status_path.read_text()
                if predicate(text):
                    return text
            self._check_alive()
            time.sleep(0.1)
        raise LabError(f"status file never matched within {timeout:g}s; last:\n{text}")

    def _check_alive(self) -> None:
        if self.process.proc.poll() is not None:
            raise LabError(f"openvpn exited: {self.log_path.read_text()[-2000:]}")


def start_openvpn_server(
    netns: str,
    workdir: Path,
    pki: Pki,
    *,
    local: str,
    port: int = 1194,
    network: str = "10.8.0.0 255.255.255.0",
    network_v6: str = "fd00:8::/64",
    status_version: int = 2,
) -> OpenvpnProcess:
    """Start a tun server (topology subnet) writing its status every second to a file.

    Its management interface is a unix socket, as a packaged server would have it
    (`management /run/openvpn-server/server.sock unix`).
    """
    status, management = workdir / "openvpn-status.log", workdir / "openvpn-mgmt.sock"
    lines = [
        "dev tun",
        "proto udp",
        f"local {local}",
        f"port {port}",
        "topology subnet",
        f"server {network}",
        f"server-ipv6 {network_v6}",
        f"ca {pki.ca}",
        f"cert {pki.server_cert}",
        f"key {pki.server_key}",
        "dh none",
        "disable-dco",  # no ovpn-dco module here; say so rather than probe and warn
        "keepalive 2 10",
        f"status {status} 1",
        f"status-version {status_version}",
        f"management {management} unix",
        "verb 3",
    ]
    process = _start(netns, workdir / "openvpn-server.conf", lines, "openvpn-server.log")
    return OpenvpnProcess(process.process, process.config, status, management)


def start_openvpn_client(
    netns: str, workdir: Path, pki: Pki, name: str, *, remote: str, port: int = 1194
) -> OpenvpnProcess:
    """Connect client `name` (its certificate's CN) and wait until its tunnel is up."""
    lines = [
        "client",
        "dev tun",
        "proto udp",
        f"remote {remote} {port}",
        "nobind",
        f"ca {pki.ca}",
        f"cert {pki.client_cert(name)}",
        f"key {pki.client_key(name)}",
        "remote-cert-tls server",
        "disable-dco",
        "verb 3",
    ]
    return _start(netns, workdir / f"openvpn-{name}.conf", lines, f"openvpn-{name}.log")


def _start(netns: str, config: Path, lines: Sequence[str], log_name: str) -> OpenvpnProcess:
    """Start openvpn in the foreground and wait for its `Initialization Sequence Completed`."""
    config.write_text("\n".join(lines) + "\n")
    log_path = config.parent / log_name
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            in_netns(netns, [OPENVPN, "--config", str(config)]),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
    started = OpenvpnProcess(ServerProcess(netns, proc, log_path), config)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while READY not in log_path.read_text():
            started._check_alive()
            if time.monotonic() > deadline:
                raise LabError(f"openvpn not ready in {START_TIMEOUT:g}s: {log_path.read_text()}")
            time.sleep(0.05)
    except BaseException:
        started.stop()
        raise
    return started
