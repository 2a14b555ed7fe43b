"""The resolver's loop: queries in flight over UDP (and TCP when truncated), one call's state.

Every query, retries included, gets its own UDP socket, connected to its nameserver,
so the kernel binds it to a fresh random ephemeral port (Linux picks autobound UDP
ports at random within ip_local_port_range) and drops datagrams from any other
address or port. A forger must then guess the port (about 15 bits) and the query id
(16 bits, from `secrets`) and echo the question; a mismatching datagram is dropped and
the real answer may still come. A socket is closed as soon as its answer is in, so the
sockets open at once are bounded by `limit` (the resolver's concurrency, capped by
RLIMIT_NOFILE), TCP exchanges included.

Nothing here is shared between calls: one `Run` per `resolve_many`, so calls from
several threads never meet.
"""

from __future__ import annotations

import errno
import secrets
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from repogate.sources import dnswire
from repogate.sources.dnsanswer import Answer, Lookup, Outcome
from repogate.sources.dnswire import Chain

ATTEMPTS = 2  # one try and one retry (on the next nameserver, when there is one)
MAX_TCP = 32  # truncated answers re-asked over TCP at once (within the limit)
_DEAD = (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH)
_NO_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(eq=False)
class Query:
    """One name and record type on its way through the loop (mutable, identity-compared)."""

    rdtype: int
    chain: Chain
    asked: bytes  # wire form of the question now asked (the chain's current name)
    server: int  # the nameserver to try first (an index, modulo their number)
    attempts: int = 0
    tried: list[str] = field(default_factory=list)  # nameservers that failed it, in order


@dataclass(eq=False)
class Server:
    text: str
    family: socket.AddressFamily
    address: tuple[object, ...]
    down: Outcome | None = None
    why: str = ""
    last_heard: float = 0.0


@dataclass(eq=False)
class Exchange:
    """One query sent to one server on its own socket: UDP, or TCP after truncation."""

    query: Query
    server: Server
    sock: socket.socket
    ident: bytes
    deadline: float
    tcp: bool = False
    pending: bytes = b""  # TCP: still to send
    received: bytearray = field(default_factory=bytearray)  # TCP: read so far
    done: bool = False


class Run:
    """The state of one `resolve_many` call: sockets, queries in flight, results."""

    def __init__(
        self,
        names: Sequence[str],
        servers: Sequence[Server],
        *,
        timeout: float,
        deadline: float,
        limit: int,
    ) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + deadline
        self.limit = max(1, limit)
        self.selector = selectors.DefaultSelector()
        self.servers = list(servers)
        self.names = names
        self.results: dict[tuple[str, int], Lookup] = {}
        self.unsent: deque[Query] = deque()
        self.open: set[Exchange] = set()
        self.timers: deque[Exchange] = deque()  # UDP, in send order: deadlines ascend
        self.tcp_waiting: deque[tuple[Query, Server]] = deque()
        self.tcp: set[Exchange] = set()  # also in `open`
        for server in self.servers:
            server.last_heard = self.started
        for index, name in enumerate(names):
            qname = dnswire.parse_name(name)
            for rdtype in (dnswire.A, dnswire.AAAA):
                if qname is None:
                    self.results[(name, rdtype)] = Lookup(
                        "error", detail=f"{name!r} is not a valid DNS name"
                    )
                    continue
                chain = Chain(name, qname, [qname])
                # Spread over the nameservers by `index` (modulo their number when sent).
                self.unsent.append(Query(rdtype, chain, dnswire.question(qname, rdtype), index))

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> dict[str, Answer]:
        try:
            while True:
                now = time.monotonic()
                if now >= self.deadline:
                    self._give_up()
                    break
                self._send(now)
                self._start_tcp(now)
                if not (self.unsent or self.open or self.tcp_waiting):
                    break
                wake = self.deadline
                if self.timers:
                    wake = min(wake, self.timers[0].deadline)
                wake = min([wake, *(exchange.deadline for exchange in self.tcp)])
                for key, mask in self.selector.select(max(0.0, wake - time.monotonic())):
                    exchange: Exchange = key.data
                    if exchange.tcp:
                        self._on_tcp(exchange, mask)
                    else:
                        self._receive(exchange)
                self._expire(time.monotonic())
        finally:
            for exchange in list(self.open):
                self._close(exchange)
            self.selector.close()
        return self._answers()

    def _answers(self) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        for name in self.names:
            lookups = {
                dnswire.TYPE_NAMES[rdtype]: self.results.get(
                    (name, rdtype), Lookup("timeout", detail=f"no answer for {name}")
                )
                for rdtype in (dnswire.A, dnswire.AAAA)
            }
            answers[name] = Answer.combine(name, lookups)
        return answers

    def _live(self, preferred: int) -> Server | None:
        """The first nameserver still answering, from `preferred` on (modulo their number)."""
        count = len(self.servers)
        for step in range(count):
            server = self.servers[(preferred + step) % count]
            if server.down is None:
                return server
        return None

    def _send(self, now: float) -> None:
        while self.unsent and len(self.open) < self.limit:
            query = self.unsent.popleft()
            server = self._live(query.server)
            if server is None:
                down = next(s for s in self.servers if s.down is not None)
                self._finish(query, Lookup(down.down or "error", detail=down.why))
                continue
            try:
                sock = socket.socket(server.family, socket.SOCK_DGRAM)
            except OSError as exc:
                if self._out_of_files(query, exc):
                    return
                continue
            ident = secrets.randbits(16)
            exchange = Exchange(query, server, sock, struct.pack("!H", ident), now + self.timeout)
            try:
                sock.setblocking(False)
                # Connecting binds a random ephemeral port; the kernel then drops datagrams
                # from anyone but the server, and reports its ICMP port unreachable (a dead
                # local resolver) as ECONNREFUSED at once.
                sock.connect(server.address)
                sock.send(dnswire.build(ident, query.asked))
            except OSError as exc:
                sock.close()
                self._server_failed(server, exc)
                self._failed(
                    query, server, "error", f"cannot send to {server.text}: {exc.strerror or exc}"
                )
                continue
            self.open.add(exchange)
            self.timers.append(exchange)
            self.selector.register(sock, selectors.EVENT_READ, exchange)

    def _out_of_files(self, query: Query, exc: OSError) -> bool:
        """No socket to be had: wait for one in flight to close, or fail the query."""
        if exc.errno in _NO_FILES and self.open:
            self.limit = max(1, len(self.open))  # stay below what the process can open
            self.unsent.appendleft(query)
            return True
        self._finish(query, Lookup("error", detail=f"cannot open a socket: {exc.strerror or exc}"))
        return False

    def _receive(self, exchange: Exchange) -> None:
        query, server, sock = exchange.query, exchange.server, exchange.sock
        while True:
            try:
                wire = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                self._close(exchange)
                self._server_failed(server, exc)
                self._failed(query, server, "error", _refused(server, exc))
                return
            if not dnswire.matches(wire, exchange.ident, query.asked):
                continue  # a stray or forged datagram: the real answer may still come
            self._close(exchange)
            server.last_heard = time.monotonic()
            if dnswire.truncated(wire):
                self.tcp_waiting.append((query, server))
            else:
                self._on_answer(query, server, wire)
            return

    def _expire(self, now: float) -> None:
        timers = self.timers
        while timers and (timers[0].done or timers[0].deadline <= now):
            exchange = timers.popleft()
            if exchange.done:
                continue
            self._close(exchange)
            server = exchange.server
            if server.down is None and now - server.last_heard >= 2 * self.timeout:
                # Nothing at all from it for two timeouts, retries included: stop asking it.
                self._mark_down(
                    server, "timeout", f"no answer from {server.text} for {2 * self.timeout:g} s"
                )
            self._failed(exchange.query, server, "timeout", "")
        for exchange in [e for e in self.tcp if e.deadline <= now]:
            self._close(exchange)
            self._failed(exchange.query, exchange.server, "timeout", "")

    def _server_failed(self, server: Server, exc: OSError) -> None:
        if exc.errno in _DEAD:
            self._mark_down(server, "error", _refused(server, exc))

    def _mark_down(self, server: Server, reason: Outcome, why: str) -> None:
        """Fail everything in flight to a dead server; retries go to the others, if any."""
        if server.down is not None:
            return
        server.down, server.why = reason, why
        for exchange in [e for e in self.open if e.server is server]:
            self._close(exchange)
            self._failed(exchange.query, server, reason, why)

    def _give_up(self) -> None:
        why = f"gave up at the deadline of {self.deadline - self.started:g} s for the whole call"
        queries = [e.query for e in self.open] + list(self.unsent)
        queries += [query for query, _server in self.tcp_waiting]
        for query in queries:
            self._finish(query, Lookup("timeout", detail=f"{why} ({query.chain.name})"))
        for exchange in list(self.open):
            self._close(exchange)
        self.unsent.clear()
        self.tcp_waiting.clear()

    def _failed(self, query: Query, server: Server, outcome: Outcome, detail: str) -> None:
        query.attempts += 1
        query.tried.append(server.text)
        if query.attempts >= ATTEMPTS:
            if outcome == "timeout" and not detail:
                asked = dnswire.TYPE_NAMES[query.rdtype]
                detail = (
                    f"timeout: no answer for {query.chain.name} {asked} from "
                    f"{', '.join(query.tried)} ({ATTEMPTS} attempts of {self.timeout:g} s)"
                )
            self._finish(query, Lookup(outcome, detail=detail))
            return
        query.server += 1  # the retry goes to the next nameserver, on a new socket and port
        self.unsent.appendleft(query)

    def _finish(self, query: Query, lookup: Lookup) -> None:
        self.results[(query.chain.name, query.rdtype)] = lookup

    def _close(self, exchange: Exchange) -> None:
        if exchange.done:
            return
        exchange.done = True
        self.open.discard(exchange)
        self.tcp.discard(exchange)
        self.selector.unregister(exchange.sock)
        exchange.sock.close()

    def _on_answer(self, query: Query, server: Server, wire: bytes) -> None:
        verdict = dnswire.judge(wire, query.chain, query.rdtype, server.text)
        if verdict.lookup is not None:
            self._finish(query, verdict.lookup)
        elif verdict.follow is not None:
            query.asked = dnswire.question(verdict.follow, query.rdtype)
            query.attempts = 0
            query.tried.clear()
            self.unsent.appendleft(query)
        else:
            self._failed(query, server, verdict.retry or "error", verdict.detail)

    # -- TCP for truncated answers ----------------------------------------------------------

    def _start_tcp(self, now: float) -> None:
        while self.tcp_waiting and len(self.tcp) < MAX_TCP and len(self.open) < self.limit:
            query, server = self.tcp_waiting.popleft()
            try:
                sock = socket.socket(server.family, socket.SOCK_STREAM)
            except OSError as exc:
                if exc.errno in _NO_FILES and self.open:
                    self.limit = max(1, len(self.open))
                    self.tcp_waiting.appendleft((query, server))
                    return
                self._failed(query, server, "error", f"cannot open a socket: {exc.strerror}")
                continue
            ident = secrets.randbits(16)
            wire = dnswire.build(ident, query.asked)
            sock.setblocking(False)
            error = sock.connect_ex(server.address)
            if error not in (0, errno.EINPROGRESS):
                sock.close()
                self._failed(
                    query,
                    server,
                    "error",
                    f"TCP to {server.text}: {errno.errorcode.get(error, error)}",
                )
                continue
            exchange = Exchange(
                query,
                server,
                sock,
                struct.pack("!H", ident),
                now + self.timeout,
                tcp=True,
                pending=struct.pack("!H", len(wire)) + wire,
            )
            self.open.add(exchange)
            self.tcp.add(exchange)
            self.selector.register(sock, selectors.EVENT_WRITE, exchange)

    def _on_tcp(self, exchange: Exchange, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._tcp_write(exchange)
            else:
                self._tcp_read(exchange)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(exchange)
            detail = f"TCP to {exchange.server.text}: {exc.strerror or exc}"
            self._failed(exchange.query, exchange.server, "error", detail)

    def _tcp_write(self, exchange: Exchange) -> None:
        sock = exchange.sock
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, errno.errorcode.get(error, "connect failed"))
        sent = sock.send(exchange.pending)
        exchange.pending = exchange.pending[sent:]
        if not exchange.pending:
            self.selector.modify(sock, selectors.EVENT_READ, exchange)

    def _tcp_read(self, exchange: Exchange) -> None:
        data = exchange.sock.recv(65535)
        if not data:
            raise OSError(errno.ECONNRESET, "closed before a whole answer")
        exchange.received += data
        received = exchange.received
        if len(received) < 2 or len(received) < 2 + struct.unpack("!H", received[:2])[0]:
            return
        self._close(exchange)
        size = struct.unpack("!H", received[:2])[0]
        wire = bytes(received[2 : 2 + size])
        query, server = exchange.query, exchange.server
        if not dnswire.matches(wire, exchange.ident, query.asked):
            self._failed(query, server, "error", f"TCP answer from {server.text} did not match")
            return
        self._on_answer(query, server, wire)


def _refused(server: Server, exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return f"nothing listens at {server.text} port {server.address[1]} (ICMP port unreachable)"
    return f"{server.text}: {exc.strerror or exc}"
