"""Tell when someone else changes the owned table, from nf_tables' own notifications.

Polling the gate chain every 2 s cost the idle daemon about 40% of a core at
100,000 elements (each listing loads every element). Instead, a thread joins
NFNLGRP_NFTABLES, the group `nft monitor` uses, and waits: each commit sends one
message per changed object (one per set element) and then NEWGEN, which carries
the generation id and the committing task's id.

That id is task_pid_nr(): a thread id. repogate applies from scheduler threads,
so "committed by us" means "by a thread that applied through our NftBackend"
(own_tasks: the thread may have ended before its NEWGEN is read) or "by a live
thread of our process" (/proc/<pid>/task/<tid>).
The id is the one in the initial PID namespace, so in a container with its own
PID namespace every commit looks foreign: a needless verify, never a missed one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Collection

from repogate.errors import NftError, NftPermissionError
from repogate.nft import netlink
from repogate.nft.netlink import Commit, CommitTracker
from repogate.nft.query import open_socket

log = logging.getLogger(__name__)

# A 100,000-element commit is ~100,000 messages; the kernel packs them into
# ~4 KiB buffers, about 12 MiB of receive-buffer charge. Past this, ENOBUFS.
RECEIVE_BUFFER = 64 << 20
_RECV_SIZE = 1 << 16
_SO_RCVBUFFORCE = 33  # Linux; the socket module does not export it
_JOIN_TIMEOUT = 1.0
OVERFLOW_REASON = "nftables notifications overflowed the receive buffer; changes may be missed"


class TableMonitor:
    """Calls `on_foreign_change(reason)`, from its own thread, when another process
    commits a change to table `inet <table>`, or when notifications were lost."""

    def __init__(
        self,
        table: str,
        on_foreign_change: Callable[[str], None],
        own_pid: int | None = None,
        *,
        own_tasks: Collection[int] = (),
        receive_buffer: int = RECEIVE_BUFFER,
        proc: str = "/proc",
    ) -> None:
        self.on_foreign_change = on_foreign_change
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.own_tasks = own_tasks  # NftBackend.committing_tasks: ids of ended threads too
        self.receive_buffer = receive_buffer
        self.proc = proc
        self._tracker = CommitTracker(table)
        self._table = table
        self._wake_w = -1  # close() writes here to wake the thread at once
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def table(self) -> str:
        return self._table

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_table(self, table: str) -> None:
        """Watch another table from the next message on (agent.table was renamed)."""
        self._table = table
        self._tracker.set_table(table)

    def start(self) -> None:
        """Join the group now, so a failure (no CAP_NET_ADMIN) raises here."""
        if self._thread is not None:
            raise RuntimeError("TableMonitor already started")
        sock = _subscribe(self.receive_buffer)
        wake, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._loop, args=(sock, wake), name="nft-monitor", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; returns within a second."""
        self._stopping.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):  # EPIPE: the thread has already ended
                os.write(self._wake_w, b"x")
            os.close(self._wake_w)
            self._wake_w = -1
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)  # the thread closes its socket and pipe end

    def __enter__(self) -> TableMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_own(self, pid: int) -> bool:
        """Whether task `pid` is a thread of our process (see the module docstring)."""
        if pid == self.own_pid or pid in self.own_tasks:
            return True
        return os.path.exists(f"{self.proc}/{self.own_pid}/task/{pid}")

    def _loop(self, sock: socket.socket, wake: int) -> None:
        try:
            self._watch(sock, wake)
        finally:
            sock.close()
            os.close(wake)

    def _watch(self, sock: socket.socket, wake: int) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([sock.fileno(), wake], [], [])
                if wake in readable:
                    return  # close() was called
                data = sock.recv(_RECV_SIZE)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._tracker.reset()
                    self._report(OVERFLOW_REASON)
                    continue
                if not self._stopping.is_set():
                    log.error("nft monitor stopped: %s", exc)
                    self._report(f"the nftables monitor stopped: {exc}")
                return
            for commit in self._tracker.feed(data):
                if commit.touched and not self.is_own(commit.pid):
                    self._report(_describe(commit, self._table))

    def _report(self, reason: str) -> None:
        try:
            self.on_foreign_change(reason)
        except Exception:  # the monitor must outlive a failing callback
            log.exception("on_foreign_change failed")


def _describe(commit: Commit, table: str) -> str:
    who = f"{commit.process} (pid {commit.pid})" if commit.process else f"pid {commit.pid}"
    return f"table inet {table} changed by {who} in generation {commit.generation}"


def _subscribe(receive_buffer: int) -> socket.socket:
    sock = open_socket()
    try:
        try:
            # SO_RCVBUFFORCE passes net.core.rmem_max; it needs CAP_NET_ADMIN.
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, 1 << (netlink.NFNLGRP_NFTABLES - 1)))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EPERM:
            raise NftPermissionError(
                "cannot watch nftables: operation not permitted (needs CAP_NET_ADMIN)"
            ) from exc
        raise NftError(f"cannot watch nftables: {exc}") from exc
    return sock
