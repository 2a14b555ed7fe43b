"""OpenVPN address map: which certificate common names hold which virtual addresses.

Read from the server's status file (`status-version 2`, comma separated, or 3, tab
separated) or live from its management interface (`status 3`); both carry the same table.
Columns are found by the HEADER lines' names, never by position: 2.4 added `Client ID`,
2.5 `Data Channel Cipher`, older servers lack `Virtual IPv6 Address`.

OpenVPN rewrites its status file in place, a `write()` per line from offset 0 and a
truncate at the end, so a reader can see the new head glued to the old tail. The file is
therefore read whole, again if its mtime moved meanwhile or it looks torn (no `END`, or a
seam), and anything not shaped like a status line (the torn seam) or after `END` is
rejected with its line number, never parsed; a file that stays without `END` fails.
A status file that stopped being rewritten (the server died) still lists its last
clients: its TIME line is checked against `max_age`.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from repogate.addresses import Rejected, canonical_address, element_order
from repogate.errors import SourceError
from repogate.sources.devices import Sighting
from repogate.sources.devices.rewrites import (  # noqa: F401 - the policy, named here too
    CUT_SHORT,
    READ_ATTEMPTS,
    REREAD_PAUSE,
    read_whole,
)

MAX_STATUS = 32 * 1024 * 1024
_KNOWN = frozenset({"TITLE", "TIME", "HEADER", "CLIENT_LIST", "ROUTING_TABLE", "GLOBAL_STATS"})
_SAMPLE = 10
_TORN = "not a status line (a torn rewrite?)"


@dataclass(frozen=True)
class OpenvpnClient:
    """One CLIENT_LIST row (a connection; a name may connect twice with `duplicate-cn`)."""

    common_name: str
    real_address: str
    addresses: tuple[str, ...]  # canonical virtual IPv4 and IPv6 addresses
    connected_since: float | None  # epoch seconds
    client_id: int | None  # for `client-kill`; absent before OpenVPN 2.4
    line: int


@dataclass(frozen=True)
class OpenvpnStatus:
    """The parsed table: sightings per common name, the rows behind them, what was rejected."""

    sightings: tuple[Sighting, ...]
    clients: tuple[OpenvpnClient, ...]
    rejected: tuple[Rejected, ...]  # the first few, located by line
    rejected_count: int
    updated: float | None  # the TIME line: when the server wrote this
    complete: bool  # an END line closed it; False: cut short, some clients may be missing


def read_status_file(
    path: Path, *, now: float, max_age: float, interface: str | None = None
) -> OpenvpnStatus:
    """Read and parse a status file; SourceError if unreadable or older than `max_age`.

    `max_age` must exceed the server's `status <file> <seconds>` interval (default 60).
    A read without END, or with a torn seam, may have met a rewrite and is read again
    (see `rewrites`; found by tests/e2e/test_faults_files.py); still without END, it fails.
    """
    status = read_whole(
        lambda: parse_status(_read_stable(path), where=str(path), interface=interface),
        lambda status: status.complete and not any(r.reason == _TORN for r in status.rejected),
    )
    if not status.complete:
        raise SourceError(f"{path}: no END line {CUT_SHORT}")
    if status.updated is None:
        raise SourceError(f"{path}: no TIME line; set `status-version 2` (or 3) on the server")
    if now - status.updated > max_age:
        age = now - status.updated
        raise SourceError(
            f"{path}: written {age:.0f} s ago (max {max_age:g} s): is OpenVPN running?"
        )
    return status


def _read_stable(path: Path, attempts: int = 3) -> str:
    """Read the file whole; again if it changed while being read (a rewrite in progress)."""
    for _ in range(attempts):
        try:
            with path.open("rb") as handle:
                before = os.fstat(handle.fileno()).st_mtime_ns
                data = handle.read(MAX_STATUS + 1)
                after = os.fstat(handle.fileno()).st_mtime_ns
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror or exc}") from exc
        if len(data) > MAX_STATUS:
            raise SourceError(f"{path}: larger than {MAX_STATUS} bytes")
        if before == after:
            break
        time.sleep(0.05)
    return data.decode("utf-8", errors="replace")


def parse_status(text: str, *, where: str, interface: str | None = None) -> OpenvpnStatus:
    """Parse a status-version 2 or 3 text (a file, or the management's `status 3` reply)."""
    lines = text.split("\n")
    truncated = lines.pop() if lines else ""  # text after the last newline: cut mid-line
    first = next((line for line in lines if line.strip()), truncated)
    if first and not first.startswith(("TITLE", "TIME", "HEADER")):
        raise SourceError(f"{where}: not a status-version 2 or 3 file (line 1: {first[:60]!r})")
    sep = "\t" if "\t" in first else ","
    parser = _Parser(where, sep)
    for number, line in enumerate(lines, start=1):
        parser.line(number, line.rstrip("\r"))
    if truncated:
        parser.reject(len(lines) + 1, truncated, "cut short mid-line (file being rewritten?)")
    return parser.result(interface)


class _Parser:
    """Line by line state: the latest HEADER per section, rows, rejections, END seen."""

    def __init__(self, where: str, sep: str) -> None:
        self.where = where
        self.sep = sep
        self.headers: dict[str, list[str]] = {}
        self.clients: list[OpenvpnClient] = []
        self.rejected: list[Rejected] = []
        self.rejected_count = 0
        self.updated: float | None = None
        self.ended = False

    def reject(self, number: int, text: str, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < _SAMPLE:
            self.rejected.append(Rejected(f"{self.where}:{number}", text, reason))

    def line(self, number: int, line: str) -> None:
        if not line.strip():
            return
        fields = line.split(self.sep)
        kind = fields[0]
        if self.ended:
            self.reject(number, line, "after END (file being rewritten?)")
        elif kind == "END" and len(fields) == 1:
            self.ended = True
        elif kind not in _KNOWN:
            self.reject(number, line, _TORN)
        elif kind == "HEADER" and len(fields) > 2:
            self.headers[fields[1]] = fields[2:]
        elif kind == "TIME" and len(fields) >= 3 and fields[2].isdigit():
            self.updated = float(fields[2])
        elif kind == "CLIENT_LIST":
            self.client(number, line, fields[1:])

    def client(self, number: int, line: str, values: list[str]) -> None:
        columns = self.headers.get("CLIENT_LIST")
        if columns is None:
            self.reject(number, line, "CLIENT_LIST row before its HEADER")
            return
        if len(values) != len(columns):
            reason = f"{len(values)} fields where the HEADER names {len(columns)}"
            self.reject(number, line, reason)
            return
        row = dict(zip(columns, values, strict=True))
        name = row.get("Common Name", "")
        if name in ("", "UNDEF"):
            self.reject(number, line, f"no certificate common name ({name or 'blank'})")
            return
        addresses: list[str] = []
        for column in ("Virtual Address", "Virtual IPv6 Address"):
            raw = row.get(column, "")
            found = canonical_address(raw) if raw else None
            if raw and found is None:
                self.reject(number, line, f"{column} {raw!r} is not an IP address")
                return
            if found is not None:
                addresses.append(found[1])
        if not addresses:
            self.reject(number, line, f"{name}: no virtual address (still connecting?)")
            return
        since = row.get("Connected Since (time_t)", "")
        cid = row.get("Client ID", "")
        self.clients.append(
            OpenvpnClient(
                common_name=name,
                real_address=row.get("Real Address", ""),
                addresses=tuple(addresses),
                connected_since=float(since) if since.isdigit() else None,
                client_id=int(cid) if cid.isdigit() else None,
                line=number,
            )
        )

    def result(self, interface: str | None) -> OpenvpnStatus:
        if not self.ended:
            self.reject(0, "", "no END line: cut short, clients may be missing")
        by_name: dict[str, list[OpenvpnClient]] = {}
        for client in self.clients:
            by_name.setdefault(client.common_name, []).append(client)
        sightings = []
        for name, rows in by_name.items():
            addresses = {address for row in rows for address in row.addresses}
            detail = f"connected since {_when(rows[0].connected_since)} from {rows[0].real_address}"
            if len(rows) > 1:
                detail += f" ({len(rows)} connections)"
            ordered = tuple(sorted(addresses, key=element_order))
            sightings.append(Sighting("openvpn", name, ordered, detail, interface))
        return OpenvpnStatus(
            tuple(sightings),
            tuple(self.clients),
            tuple(self.rejected),
            self.rejected_count,
            self.updated,
            self.ended,
        )


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "?"


# -- management interface --------------------------------------------------------------------

_KILLED = re.compile(r"(\d+) client\(s\) killed")


class OpenvpnManagement:
    """A client of OpenVPN's management interface: one connection per command, a deadline each.

    `address` is a unix socket path or (host, port), as in `management <addr> <port|unix>`.
    Lines starting with `>` are the server's real-time notifications and are skipped.
    """

    def __init__(
        self, address: Path | tuple[str, int], *, timeout: float = 5.0, password: str | None = None
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.password = password

    def status(self, *, interface: str | None = None) -> OpenvpnStatus:
        """The live table (`status 3`), parsed like a status file."""
        lines = self._command("status 3", until_end=True)
        return parse_status("\n".join(lines) + "\n", where=self._where(), interface=interface)

    def kill(self, common_name: str) -> int:
        """Disconnect every connection of `common_name`; return how many were killed.

        The client reconnects on its own unless the server refuses it (a CRL, a disabled ccd
        entry): this ends the session now, revocation is the server's configuration.
        """
        reply = self._command(f"kill {_quote(common_name)}")[-1]
        if reply.startswith("ERROR:") and "not found" in reply:
            return 0
        match = _KILLED.search(reply)
        if not reply.startswith("SUCCESS:") or match is None:
            raise SourceError(f"{self._where()}: kill {common_name!r}: {reply}")
        return int(match.group(1))

    def client_kill(self, client_id: int, message: str = "HALT") -> None:
        """Disconnect one connection by its Client ID; HALT tells the client not to retry."""
        if not message.isalnum():
            raise ValueError(f"client-kill message {message!r} must be a single word")
        reply = self._command(f"client-kill {int(client_id)} {message}")[-1]
        if not reply.startswith("SUCCESS:"):
            raise SourceError(f"{self._where()}: client-kill {client_id}: {reply}")

    def _where(self) -> str:
        if isinstance(self.address, Path):
            return f"openvpn management {self.address}"
        host, port = self.address
        return f"openvpn management {host}:{port}"

    def _command(self, command: str, *, until_end: bool = False) -> list[str]:
        deadline = time.monotonic() + self.timeout
        try:
            with self._connect() as sock:
                reader = _LineReader(sock, deadline)
                if self.password is not None:
                    reader.expect_prompt("ENTER PASSWORD:")
                    sock.sendall(self.password.encode() + b"\n")
                sock.sendall(command.encode() + b"\n")
                lines: list[str] = []
                while True:
                    line = reader.line()
                    if line.startswith(">") or (not lines and line.startswith("SUCCESS: password")):
                        continue
                    lines.append(line)
                    done = line == "END" if until_end else line.startswith(("SUCCESS:", "ERROR:"))
                    if done or (until_end and line.startswith("ERROR:")):
                        break
                sock.sendall(b"quit\n")
        except TimeoutError as exc:
            raise SourceError(
                f"{self._where()}: no answer to {command.split(maxsplit=1)[0]!r} in time"
            ) from exc
        except OSError as exc:
            raise SourceError(f"{self._where()}: {exc.strerror or exc}") from exc
        if until_end and lines[-1].startswith("ERROR:"):
            raise SourceError(f"{self._where()}: {command}: {lines[-1]}")
        return lines

    def _connect(self) -> socket.socket:
        if isinstance(self.address, Path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(str(self.address))
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.address, timeout=self.timeout)


def _quote(name: str) -> str:
    """Quote a common name for the management parser; control characters are refused."""
    if not name or any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ValueError(f"common name {name!r} is empty or holds control characters")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _LineReader:
    """CRLF lines from a socket, every read bounded by one deadline and a size cap."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.total = 0

    def line(self) -> str:
        while b"\n" not in self.buffer:
            self._fill()
        raw, _, self.buffer = self.buffer.partition(b"\n")
        return raw.rstrip(b"\r").decode("utf-8", errors="replace")

    def expect_prompt(self, prompt: str) -> None:
        """Wait for a prompt the server writes without a newline (`ENTER PASSWORD:`)."""
        while prompt.encode() not in self.buffer:
            self._fill()
        self.buffer = self.buffer.partition(prompt.encode())[2]

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.total += len(chunk)
        if self.total > MAX_STATUS:
            raise SourceError("management reply too large")
        self.buffer += chunk
