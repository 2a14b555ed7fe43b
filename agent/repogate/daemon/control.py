"""The daemon's control channel: status, sync and explain over its lock socket.

Each connection is served on its own short-lived thread with a deadline, so a
client that connects and says nothing holds up nobody; the accept loop polls,
so `close()` returns within a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from repogate.runtime import own_user_or_root, read_message

log = logging.getLogger("repogate")
POLL = 0.5  # seconds between checks for close()
CLIENT_DEADLINE = 10.0  # seconds a client has to send its request

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    def __init__(self, listener: Callable[[], socket.socket], handle: Handler) -> None:
        self._listener = listener  # read at every poll: a table rename swaps it
        self._handle = handle
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2 * POLL)

    def _run(self) -> None:
        while not self._stopped.is_set():
            listener = self._listener()
            try:
                ready, _, _ = select.select([listener], [], [], POLL)
                if not ready:
                    continue
                connection, _ = listener.accept()
            except (OSError, ValueError):  # closed under us by a rename or the stop
                self._stopped.wait(POLL)
                continue
            threading.Thread(
                target=self._serve, args=(connection,), name="control-client", daemon=True
            ).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.settimeout(CLIENT_DEADLINE)
                if not own_user_or_root(connection):
                    answer: dict[str, Any] = {"error": "only root and the service user may ask"}
                else:
                    try:
                        request = read_message(connection)
                    except ValueError:
                        return  # connected and left (a lock probe) or sent garbage
                    connection.settimeout(None)  # a sync may take as long as its sources
                    answer = self._handle(request)
                connection.sendall(json.dumps(answer, default=str).encode() + b"\n")
            except (OSError, ValueError) as exc:
                log.info("control connection dropped: %s", exc)
            except Exception as exc:  # a bad request must never take the daemon down
                log.error("control request failed: %s: %s", type(exc).__name__, exc)
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
