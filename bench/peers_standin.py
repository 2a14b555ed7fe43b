"""The publisher both list peers poll: CrowdSec's decision stream and a plain list, one state.

Run inside a benchmark namespace by bench/peers.py (`python3 bench/peers_standin.py PORT
KEY`), standard library only. It holds one published list of IPv4 addresses, replaced
whole by a JSON line on stdin (`{"publish": [...], "version": n}`, answered with
`{"published": n}`), and serves it two ways:

- `GET /v1/decisions/stream[?startup=true]` with `X-Api-Key: KEY`, as CrowdSec's local API
  answers a stream bouncer: `{"new": [...], "deleted": [...]}` (null when empty), each a
  decision of type `ban`, scope `Ip`, with id, origin, scenario, value and duration. Startup
  sends every active decision; a later pull sends what changed since this client's last
  pull, as LAPI does per bouncer. A wrong key gets 403, as LAPI answers.
- `GET /list.txt`: the same addresses one per line, with an ETag, so repogate's conditional
  fetch gets 304 while nothing changed (as from a real web server).

Whenever a response first carries version n to a path, it prints
`{"served": path, "version": n, "at": <time.time() after the body was written>}`: the
moment the data left the publisher, from which both peers' enforcement is timed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DURATION = "4h"


class State:
    """The published list, and what the stream client was last sent."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.version = 0
        self.current: frozenset[str] = frozenset()
        self.delivered: frozenset[str] = frozenset()  # the stream client's view
        self.ids: dict[str, int] = {}
        self.next_id = 1
        self.reported: set[tuple[str, int]] = set()

    def publish(self, addresses: list[str], version: int) -> None:
        with self.lock:
            self.current = frozenset(addresses)
            self.version = version
            for address in self.current:
                if address not in self.ids:
                    self.ids[address] = self.next_id
                    self.next_id += 1

    def decision(self, address: str, duration: str) -> dict[str, object]:
        return {
            "id": self.ids[address],
            "origin": "cscli",
            "type": "ban",
            "scope": "Ip",
            "value": address,
            "duration": duration,
            "scenario": "bench: published by bench/peers_standin.py",
            "simulated": False,
        }

    def stream(self, startup: bool) -> tuple[bytes, int, bool]:
        with self.lock:
            if startup:
                new, deleted = self.current, frozenset[str]()
            else:
                new, deleted = self.current - self.delivered, self.delivered - self.current
            self.delivered = self.current
            body = {
                "new": [self.decision(a, DURATION) for a in sorted(new)] or None,
                "deleted": [self.decision(a, "0s") for a in sorted(deleted)] or None,
            }
            return json.dumps(body).encode(), self.version, bool(new or deleted)

    def listing(self) -> tuple[bytes, int]:
        with self.lock:
            return "".join(f"{a}\n" for a in sorted(self.current)).encode(), self.version

    def served(self, path: str, version: int) -> None:
        at = time.time()
        with self.lock:
            if (path, version) in self.reported:
                return
            self.reported.add((path, version))
        emit({"served": path, "version": version, "at": at})


_out = threading.Lock()


def emit(message: dict[str, object]) -> None:
    with _out:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as both clients use it

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/v1/decisions/stream":
                if self.headers.get("X-Api-Key") != state.key:
                    self.reply(403, b'{"message":"access forbidden"}', "application/json")
                    return
                startup = parse_qs(parts.query).get("startup") == ["true"]
                body, version, changed = state.stream(startup)
                self.reply(200, body, "application/json")
                if changed:
                    state.served("lapi", version)
            elif parts.path == "/list.txt":
                body, version = state.listing()
                etag = f'"v{version}"'
                if self.headers.get("If-None-Match") == etag:
                    self.reply(304, b"", "text/plain", etag)
                    return
                self.reply(200, body, "text/plain", etag)
                state.served("list", version)
            else:
                self.reply(404, b"not found\n", "text/plain")

        def reply(self, code: int, body: bytes, kind: str, etag: str | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if etag is not None:
                self.send_header("ETag", etag)
            self.end_headers()
            if body:
                self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:
            pass  # stdout carries the protocol; access logs would only add noise

    return Handler


def main(argv: list[str]) -> int:
    port, key = int(argv[0]), argv[1]
    state = State(key)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    emit({"listening": port})
    for line in sys.stdin:
        request = json.loads(line)
        state.publish(request["publish"], int(request["version"]))
        emit({"published": int(request["version"])})
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
