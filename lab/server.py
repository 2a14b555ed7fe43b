"""The lab's TCP server: accept, write a one-line banner naming what was reached, close.

Run inside a server namespace as `python -m lab.server --listen NAME,ADDRESS,PORT ...`; it
prints `ready` once every socket listens, so the lab never races its own servers. The banner
(`repogate-lab bitbucket 198.51.100.10:22`) lets a probe prove it reached the intended listener
and not, say, something answering on the gateway. The program half is stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError

READY = "ready"


@dataclass(frozen=True)
class Listener:
    """One listening socket and the service name it reports."""

    name: str
    address: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        """AF_INET6 for IPv6 literals, else AF_INET."""
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET

    @property
    def banner(self) -> bytes:
        """The line sent to every client."""
        host = f"[{self.address}]" if self.family == socket.AF_INET6 else self.address
        return f"repogate-lab {self.name} {host}:{self.port}\n".encode()

    def to_arg(self) -> str:
        """Encode for `--listen` (commas never occur in names or addresses)."""
        return f"{self.name},{self.address},{self.port}"

    @classmethod
    def from_arg(cls, text: str) -> Listener:
        """Decode a `--listen NAME,ADDRESS,PORT` value."""
        try:
            name, address, port = text.split(",")
            return cls(name, address, int(port))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected NAME,ADDRESS,PORT, got {text!r}") from exc


def serve(listeners: Sequence[Listener]) -> None:
    """Listen on every address, report readiness on stdout, then answer until killed."""
    sel = selectors.DefaultSelector()
    for listener in listeners:
        sock = socket.create_server(
            (listener.address, listener.port), family=listener.family, backlog=128
        )
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, (sock, listener))
    print(READY, flush=True)
    while True:
        for key, _events in sel.select():
            listening, answering = key.data
            try:
                conn, _peer = listening.accept()
            except OSError:
                continue  # the client gave up between SYN and accept; nothing to answer
            with conn:
                try:
                    conn.settimeout(1.0)
                    conn.sendall(answering.banner)
                except OSError:
                    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m lab.server`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", type=Listener.from_arg, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.listen)
    return 0


@dataclass
class ServerProcess:
    """A running lab server (host side): the process and where its stderr goes."""

    netns: str
    proc: subprocess.Popen[str]
    log_path: Path

    def stop(self, timeout: float = 2.0) -> None:
        """Terminate the server, killing it if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_server(
    argv_prefix: Sequence[str],
    netns: str,
    listeners: Sequence[Listener],
    *,
    log_path: Path,
    env: Mapping[str, str],
    timeout: float = 10.0,
) -> ServerProcess:
    """Start a server with `argv_prefix` (e.g. `ip netns exec NS python`) and wait for `ready`.

    The server gets its own session so a Ctrl-C on the terminal reaches only the lab driver,
    which then stops servers in order instead of racing them.
    """
    argv = [*argv_prefix, "-m", "lab.server", *(f"--listen={lst.to_arg()}" for lst in listeners)]
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env),
            start_new_session=True,
        )
    server = ServerProcess(netns, proc, log_path)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline() if sel.select(timeout) else ""
    sel.close()
    if line.strip() != READY:
        server.stop()
        detail = log_path.read_text().strip() or f"no {READY!r} line within {timeout:g}s"
        raise LabError(f"lab server in {netns} failed to start: {detail}")
    return server


if __name__ == "__main__":
    sys.exit(main())
