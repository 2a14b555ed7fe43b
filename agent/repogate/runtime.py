"""One repogate per table, and the way to talk to it: an abstract Unix socket.

The daemon binds `@repogate/<table>` and keeps it for its whole life. Abstract
socket names belong to the network namespace, which is exactly the scope of an
nftables table, and the kernel frees the name the moment the process dies, so a
crash never leaves a stale lock behind. `repogate sync` and `teardown` take the
same name while they work; when a daemon holds it, they go through it instead.

The same socket is the daemon's control channel: one JSON request line, one JSON
response. Only root and the daemon's own user are answered (SO_PEERCRED), since
status and explain show client addresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import threading
from typing import Any

from repogate.errors import RepogateError

MAX_MESSAGE = 1 << 20  # a status of thousands of sources fits; a runaway peer does not


class AlreadyRunningError(RepogateError):
    """Another repogate holds this table (a daemon, or a sync in progress)."""

    def __init__(self, table: str, pid: int | None) -> None:
        self.table, self.pid = table, pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another repogate ({who}) already manages table inet {table} in this network "
            "namespace; two would undo each other's changes"
        )


class ControlError(RepogateError):
    """The daemon could not be asked, or refused the request."""


class NoDaemonError(ControlError):
    """Nothing holds the table's lock: no daemon (and no sync) runs on it."""


def address(table: str) -> str:
    return f"\0repogate/{table}"


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def holder(table: str) -> int | None:
    """The pid of the process holding the table's lock, or None if none does."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
            probe.settimeout(2.0)
            probe.connect(address(table))
            return peer(probe)[0]
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except OSError:
        return None


class TableLock:
    """The table's lock; `listener` accepts control connections while held.

    A command that holds it (`sync`, `teardown`) has no control channel: with
    `busy` set, it answers every request at once with "busy", so a second
    command fails fast instead of waiting for an answer that never comes.
    """

    def __init__(self, table: str, *, busy: str | None = None) -> None:
        self.table = table
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.listener.bind(address(table))
        except OSError as exc:
            self.listener.close()
            raise AlreadyRunningError(table, holder(table)) from exc
        self.listener.listen(16)
        self._busy = busy
        self._closed = threading.Event()
        self._busy_thread: threading.Thread | None = None
        if busy is not None:
            self._busy_thread = threading.Thread(target=self._answer_busy, name="busy", daemon=True)
            self._busy_thread.start()

    def _answer_busy(self) -> None:
        answer = json.dumps({"error": self._busy}).encode() + b"\n"
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.2)
                if not ready:
                    continue
                connection, _ = self.listener.accept()
            except (OSError, ValueError):
                return  # closed
            with connection, contextlib.suppress(OSError):
                connection.sendall(answer)

    def close(self) -> None:
        """Release the name now: a thread in select() on the socket would keep it bound
        after close() until select returns, so that thread is woken and waited for."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        if self._busy_thread is not None:
            self._busy_thread.join(timeout=1.0)
        self.listener.close()

    def __enter__(self) -> TableLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def ask(table: str, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to the daemon on `table`; its answer, or ControlError
    (NoDaemonError when none runs)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(address(table))
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                raise NoDaemonError(f"no repogate runs on table inet {table}") from exc
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = read_message(sock)
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot ask the daemon on table inet {table}: {exc}") from exc
    if "error" in answer:
        raise ControlError(str(answer["error"]))
    return answer


def read_message(sock: socket.socket) -> dict[str, Any]:
    """One JSON line (the peer may also just close after it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise ValueError("message too large")
        if chunk.endswith(b"\n"):
            break
    document = json.loads(b"".join(chunks).decode("utf-8"))
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def own_user_or_root(sock: socket.socket) -> bool:
    _pid, uid, _gid = peer(sock)
    return uid in (0, os.geteuid())
