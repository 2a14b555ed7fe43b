"""Resolve many names at once: A and AAAA, CNAMEs followed. The only module using dnspython.

Why not dnspython's stub resolver: it asks one question at a time, so 10,000 names
cost 20,000 round trips in a row (or a thread each). Here one selector loop keeps up
to `concurrency` queries in flight over a few UDP sockets per nameserver, matches each
answer to its query by socket, query id and question, retries a query once on the
next nameserver, falls back to TCP when an answer is truncated, and gives up at an
overall deadline, so a call can never hang the daemon. dnspython encodes the names
and the EDNS record (`dns.message.make_query`) and parses answers
(`dns.message.from_wire`); the loop only moves bytes.

Each call opens its own sockets (fresh random source ports, nothing shared), so one
Resolver may be used by several threads at once.

Outcomes, per name (A and AAAA combined, see `Answer.combine`):

    ok        at least one address
    nodata    the name exists but has no A or AAAA record
    nxdomain  the name does not exist
    servfail, refused, timeout, error
              transport-level failures: the answer says nothing about the name
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import secrets
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import dns.rrset

from repogate.addresses import canonical_address, element_order
from repogate.errors import SourceError

Outcome = Literal["ok", "nodata", "nxdomain", "servfail", "refused", "timeout", "error"]
OUTCOMES: tuple[Outcome, ...] = (
    "ok",
    "nodata",
    "nxdomain",
    "servfail",
    "refused",
    "timeout",
    "error",
)
# Failures that say nothing about the name: the resolver could not be asked or would not say.
TRANSPORT_FAILURES: frozenset[str] = frozenset({"servfail", "refused", "timeout", "error"})
# Answers that say something definite about the name.
DEFINITE: frozenset[str] = frozenset({"ok", "nodata", "nxdomain"})

RECORD_TYPES: tuple[str, ...] = ("A", "AAAA")
ATTEMPTS = 2  # one try and one retry (on the next nameserver, when there is one)
MAX_CHAIN = 8  # CNAME hops followed before the name counts as an error (a loop)
EDNS_PAYLOAD = 1232  # the 2020 DNS flag day size: no IP fragmentation on common paths
SOCKETS_PER_SERVER = 4  # spreads source ports and receive buffers
RECEIVE_BUFFER = 1 << 20  # asked for; the kernel caps it at net.core.rmem_max
MAX_TCP = 32  # truncated answers re-asked over TCP at once
RESOLV_CONF = "/etc/resolv.conf"

_A = int(dns.rdatatype.A)
_AAAA = int(dns.rdatatype.AAAA)
_CNAME = int(dns.rdatatype.CNAME)
_SOA = int(dns.rdatatype.SOA)
_IN = int(dns.rdataclass.IN)
_TYPE_CODES = {"A": _A, "AAAA": _AAAA}
_TYPE_NAMES = {_A: "A", _AAAA: "AAAA"}
_TC = int(dns.flags.TC)
_NOERROR = int(dns.rcode.NOERROR)
_NXDOMAIN = int(dns.rcode.NXDOMAIN)
_RCODES: dict[int, Outcome] = {
    int(dns.rcode.SERVFAIL): "servfail",
    int(dns.rcode.REFUSED): "refused",
}


@dataclass(frozen=True)
class Lookup:
    """One record type's result for a name."""

    outcome: Outcome
    addresses: tuple[str, ...] = ()  # canonical text (repogate.addresses.canonical_address)
    ttl: float = 0.0  # records used, CNAMEs included; negative answers: the SOA's; else 0


@dataclass(frozen=True)
class Answer:
    """What DNS says about one name, A and AAAA together.

    `lookups` keeps each record type's own result, so a caller can tell "AAAA timed
    out" from "has no AAAA" and keep what it knew for the failed half only.
    """

    name: str
    addresses: tuple[str, ...]
    ttl: float
    outcome: Outcome
    lookups: Mapping[str, Lookup] = field(default_factory=dict)

    @classmethod
    def combine(cls, name: str, lookups: Mapping[str, Lookup]) -> Answer:
        """One answer from per-type lookups.

        ok if any type gave addresses; nxdomain if any type said so (it is a property of
        the name); nodata only if every type said so; else the first failure. The TTL is
        the smallest of the lookups that gave addresses, or of the negative answers.
        """
        found = [lookup for lookup in lookups.values() if lookup.outcome == "ok"]
        outcomes = [lookup.outcome for lookup in lookups.values()]
        outcome: Outcome
        if found:
            outcome = "ok"
        elif "nxdomain" in outcomes:
            outcome = "nxdomain"
        elif outcomes and all(o == "nodata" for o in outcomes):
            outcome = "nodata"
        else:
            outcome = next((o for o in outcomes if o in TRANSPORT_FAILURES), "error")
        if found:
            ttl = min(lookup.ttl for lookup in found)
        else:
            negative = [lookup.ttl for lookup in lookups.values() if lookup.outcome in DEFINITE]
            ttl = min(negative) if negative else 0.0
        addresses = sorted(
            {address for lookup in found for address in lookup.addresses}, key=element_order
        )
        return cls(name, tuple(addresses), ttl, outcome, dict(lookups))

    def lookup(self, record_type: str) -> Lookup:
        """The result for "A" or "AAAA"; derived from the whole answer if not kept apart."""
        found = self.lookups.get(record_type)
        if found is not None:
            return found
        want_v6 = record_type == "AAAA"
        mine = tuple(a for a in self.addresses if (":" in a) == want_v6)
        if self.outcome == "ok" and not mine:
            return Lookup("nodata", (), self.ttl)
        return Lookup(self.outcome, mine, self.ttl)


@dataclass(eq=False)
class _Query:
    """One name and record type on its way through the loop (mutable, identity-compared)."""

    name: str
    rdtype: int
    qname: dns.name.Name
    question: bytes  # wire form of the question section: name, type, class
    server: int
    attempts: int = 0
    hops: int = 0
    chain_ttl: float = math.inf


@dataclass(eq=False)
class _Server:
    text: str
    family: socket.AddressFamily
    address: tuple[object, ...]
    sockets: list[socket.socket] = field(default_factory=list)
    down: Outcome | None = None
    last_heard: float = 0.0


@dataclass(eq=False)
class _Tcp:
    """A truncated answer re-asked over TCP: one short non-blocking exchange."""

    query: _Query
    server: _Server
    sock: socket.socket
    ident: bytes
    pending: bytes
    deadline: float
    received: bytearray = field(default_factory=bytearray)


class Resolver:
    """Resolves names against `nameservers` (empty: those in /etc/resolv.conf, read per call).

    `timeout` is per attempt; `deadline` bounds a whole `resolve_many` call, whatever
    the nameservers do.
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        port: int = 53,
        timeout: float = 2.0,
        concurrency: int = 128,
        *,
        deadline: float = 30.0,
        resolv_conf: str = RESOLV_CONF,
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.port = port
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.deadline = deadline
        self.resolv_conf = resolv_conf
        template = dns.message.make_query(
            dns.name.root, dns.rdatatype.A, use_edns=0, payload=EDNS_PAYLOAD
        ).to_wire()
        # Header without its id, then (after the root question: 1 + 4 bytes) the EDNS record.
        self._header = template[2:12]
        self._edns = template[17:]

    def __repr__(self) -> str:
        servers = ", ".join(self.nameservers) or f"from {self.resolv_conf}"
        return f"Resolver({servers}, port={self.port})"

    def servers(self) -> tuple[str, ...]:
        """The nameservers a call would ask now; SourceError if there are none."""
        if self.nameservers:
            return self.nameservers
        try:
            system = dns.resolver.Resolver(configure=False)
            system.read_resolv_conf(self.resolv_conf)
        except (dns.exception.DNSException, OSError) as exc:
            raise SourceError(f"no nameservers: cannot use {self.resolv_conf}: {exc}") from exc
        found = tuple(str(server) for server in system.nameservers)
        if not found:
            raise SourceError(f"no nameservers: {self.resolv_conf} lists none")
        return found

    def resolve_many(self, names: Iterable[str]) -> dict[str, Answer]:
        """A and AAAA for every name (duplicates asked once); never blocks past `deadline`."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        servers = self.servers()
        run = _Run(self, wanted)
        try:
            run.open(servers)
            return run.run()
        finally:
            run.close()

    def build(self, ident: int, question: bytes) -> bytes:
        """A query's wire form: the template's header and EDNS record around `question`."""
        return struct.pack("!H", ident) + self._header + question + self._edns


class _Run:
    """The state of one `resolve_many` call: sockets, queries in flight, results."""

    def __init__(self, resolver: Resolver, names: list[str]) -> None:
        self.resolver = resolver
        self.timeout = resolver.timeout
        self.started = time.monotonic()
        self.deadline = self.started + resolver.deadline
        self.selector = selectors.DefaultSelector()
        self.servers: list[_Server] = []
        self.results: dict[tuple[str, int], Lookup] = {}
        self.unsent: deque[_Query] = deque()
        # (socket, query id) -> the query, its server, and the send's sequence number; the
        # number tells a timer of an earlier send from one that reused the same id.
        self.inflight: dict[tuple[int, bytes], tuple[_Query, _Server, int]] = {}
        self.timers: deque[tuple[float, tuple[int, bytes], int]] = deque()
        self.sends = itertools.count()
        self.tcp_waiting: deque[tuple[_Query, _Server]] = deque()
        self.tcp: set[_Tcp] = set()
        self.names = names
        self.socket_turn = itertools.count()
        for index, name in enumerate(names):
            try:
                qname = dns.name.from_text(name)
                wire = _wire(qname)
            except dns.exception.DNSException:
                for rdtype in (_A, _AAAA):
                    self.results[(name, rdtype)] = Lookup("error")
                continue
            for rdtype in (_A, _AAAA):
                question = wire + struct.pack("!HH", rdtype, _IN)
                # Spread over the nameservers by `index` (modulo their number when sent).
                self.unsent.append(_Query(name, rdtype, qname, question, index))

    # -- sockets ------------------------------------------------------------------------

    def open(self, servers: Sequence[str]) -> None:
        for text in servers:
            self.servers.append(self._open(text))

    def _open(self, text: str) -> _Server:
        port = self.resolver.port
        try:
            info = socket.getaddrinfo(
                text, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
            )
        except OSError:
            return _Server(text, socket.AF_INET, (), down="error")
        family, _type, _proto, _name, address = info[0]
        server = _Server(text, family, tuple(address), last_heard=self.started)
        for _ in range(SOCKETS_PER_SERVER):
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError:  # out of file descriptors: fewer sockets will do
                break
            try:
                sock.setblocking(False)
                # A smaller buffer than asked for only means more retries under load.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                # Connected: the kernel drops datagrams from anyone else, and reports
                # ICMP port unreachable (a dead local resolver) as ECONNREFUSED at once.
                sock.connect(address)
            except OSError:
                sock.close()
                server.down = "error"
                break
            server.sockets.append(sock)
            self.selector.register(sock, selectors.EVENT_READ, (server, len(server.sockets) - 1))
        if not server.sockets:
            server.down = "error"
        return server

    def close(self) -> None:
        for server in self.servers:
            for sock in server.sockets:
                sock.close()
        for exchange in self.tcp:
            exchange.sock.close()
        self.selector.close()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> dict[str, Answer]:
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self._give_up()
                break
            self._send(now)
            self._start_tcp(now)
            if not (self.unsent or self.inflight or self.tcp or self.tcp_waiting):
                break
            wake = self.deadline
            if self.timers:
                wake = min(wake, self.timers[0][0])
            for exchange in self.tcp:
                wake = min(wake, exchange.deadline)
            if self.unsent and len(self.inflight) < self.resolver.concurrency:
                wake = now + 0.001  # a full socket send buffer held sending back
            for key, mask in self.selector.select(max(0.0, wake - time.monotonic())):
                if isinstance(key.data, _Tcp):
                    self._on_tcp(key.data, mask)
                else:
                    server, index = key.data
                    self._receive(server, index)
            self._expire(time.monotonic())
        return self._answers()

    def _answers(self) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        for name in self.names:
            lookups = {
                _TYPE_NAMES[rdtype]: self.results.get((name, rdtype), Lookup("timeout"))
                for rdtype in (_A, _AAAA)
            }
            answers[name] = Answer.combine(name, lookups)
        return answers

    def _live(self, preferred: int) -> int | None:
        """The index of the first nameserver still answering, from `preferred` on."""
        count = len(self.servers)
        for step in range(count):
            index = (preferred + step) % count
            if self.servers[index].down is None:
                return index
        return None

    def _down_reason(self) -> Outcome:
        return next((s.down for s in self.servers if s.down is not None), "timeout")

    def _send(self, now: float) -> None:
        limit = self.resolver.concurrency
        while self.unsent and len(self.inflight) < limit:
            query = self.unsent.popleft()
            live = self._live(query.server)
            if live is None:
                self._finish(query, Lookup(self._down_reason()))
                continue
            query.server, server = live, self.servers[live]
            index = next(self.socket_turn) % len(server.sockets)
            ident = secrets.randbits(16)
            key = (id(server.sockets[index]), struct.pack("!H", ident))
            while key in self.inflight:
                ident = (ident + 1) & 0xFFFF
                key = (key[0], struct.pack("!H", ident))
            try:
                server.sockets[index].send(self.resolver.build(ident, query.question))
            except BlockingIOError:
                self.unsent.appendleft(query)  # the send buffer is full: after the next read
                return
            except OSError as exc:
                self._server_failed(server, exc)
                self._failed(query, "error")
                continue
            sequence = next(self.sends)
            self.inflight[key] = (query, server, sequence)
            self.timers.append((now + self.timeout, key, sequence))

    def _receive(self, server: _Server, index: int) -> None:
        sock = server.sockets[index]
        sock_id = id(sock)
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                self._server_failed(server, exc)
                return
            if len(data) < 12:
                continue
            key = (sock_id, data[:2])
            entry = self.inflight.get(key)
            if entry is None:
                continue  # late (already retried), or not ours
            query = entry[0]
            question = query.question
            if (
                not data[2] & 0x80  # not a response
                or data[4:6] != b"\x00\x01"
                or data[12 : 12 + len(question)].lower() != question.lower()
            ):
                continue  # a stray or forged datagram: the real answer may still come
            del self.inflight[key]
            server.last_heard = time.monotonic()
            if data[2] & (_TC >> 8):
                self.tcp_waiting.append((query, server))
                continue
            self._on_answer(query, data)

    def _expire(self, now: float) -> None:
        timers, inflight = self.timers, self.inflight
        while timers and timers[0][0] <= now:
            _when, key, sequence = timers.popleft()
            entry = inflight.get(key)
            if entry is None or entry[2] != sequence:
                continue  # answered (and the id perhaps reused since)
            del inflight[key]
            query, server, _sequence = entry
            if server.down is None and now - server.last_heard >= 2 * self.timeout:
                # Nothing at all from it for two timeouts, retries included: stop asking it.
                self._mark_down(server, "timeout")
            self._failed(query, "timeout")
        for exchange in [e for e in self.tcp if e.deadline <= now]:
            self._tcp_done(exchange)
            self._failed(exchange.query, "timeout")

    def _server_failed(self, server: _Server, exc: OSError) -> None:
        if exc.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
            self._mark_down(server, "error")

    def _mark_down(self, server: _Server, reason: Outcome) -> None:
        """Fail everything in flight to a dead server; retries go to the others, if any."""
        if server.down is not None:
            return
        server.down = reason
        for key, (query, owner, _sequence) in list(self.inflight.items()):
            if owner is server:
                del self.inflight[key]
                self._failed(query, reason)

    def _give_up(self) -> None:
        for query, _server, _sequence in self.inflight.values():
            self._finish(query, Lookup("timeout"))
        for query in self.unsent:
            self._finish(query, Lookup("timeout"))
        for query, _server in self.tcp_waiting:
            self._finish(query, Lookup("timeout"))
        for exchange in self.tcp:
            exchange.sock.close()
            self._finish(exchange.query, Lookup("timeout"))
        self.inflight.clear()
        self.unsent.clear()
        self.tcp_waiting.clear()
        self.tcp.clear()

    def _failed(self, query: _Query, outcome: Outcome) -> None:
        query.attempts += 1
        if query.attempts >= ATTEMPTS:
            self._finish(query, Lookup(outcome))
            return
        query.server += 1  # the retry goes to the next nameserver
        self.unsent.appendleft(query)

    def _finish(self, query: _Query, lookup: Lookup) -> None:
        self.results[(query.name, query.rdtype)] = lookup

    # -- answers ----------------------------------------------------------------------------

    def _on_answer(self, query: _Query, wire: bytes) -> None:
        # Most negative answers (a client name without AAAA) carry no records at all: the
        # header decides them, and parsing, the costliest step, is skipped.
        if wire[6:10] == b"\0\0\0\0" and self._by_header(query, wire[3] & 0x0F):
            return
        try:
            message = dns.message.from_wire(wire)
        except Exception:  # anything from the network may be malformed; never stop the loop
            self._failed(query, "error")  # another try may do better
            return
        rcode = int(message.rcode())
        if rcode not in (_NOERROR, _NXDOMAIN):
            self._failed(query, _RCODES.get(rcode, "error"))
            return
        name, ttl, records = _follow(message, query)
        if records is not None:
            self._finish(query, Lookup("ok", _addresses(records), ttl))
        elif query.hops > MAX_CHAIN:
            self._finish(query, Lookup("error"))  # a CNAME loop, or a silly long chain
        elif rcode == _NXDOMAIN:
            self._finish(query, Lookup("nxdomain", (), _known(min(ttl, _negative_ttl(message)))))
        elif name != query.qname and _negative_ttl(message) == math.inf:
            # The chain leaves this server's data (an authoritative server for one zone
            # answers only the CNAME): ask for the target, as a stub resolver would.
            query.qname, query.chain_ttl, query.attempts = name, ttl, 0
            query.question = _wire(name) + struct.pack("!HH", query.rdtype, _IN)
            self.unsent.appendleft(query)
        else:
            self._finish(query, Lookup("nodata", (), _known(min(ttl, _negative_ttl(message)))))

    def _by_header(self, query: _Query, rcode: int) -> bool:
        """Settle an answer without records from its rcode; False if that cannot be done."""
        if rcode == _NOERROR:
            self._finish(query, Lookup("nodata", (), _known(query.chain_ttl)))
        elif rcode == _NXDOMAIN:
            self._finish(query, Lookup("nxdomain", (), _known(query.chain_ttl)))
        elif rcode in _RCODES:
            self._failed(query, _RCODES[rcode])
        else:
            return False
        return True

    # -- TCP for truncated answers ----------------------------------------------------------

    def _start_tcp(self, now: float) -> None:
        while self.tcp_waiting and len(self.tcp) < MAX_TCP:
            query, server = self.tcp_waiting.popleft()
            ident = secrets.randbits(16)
            wire = self.resolver.build(ident, query.question)
            sock = socket.socket(server.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            error = sock.connect_ex(server.address)
            if error not in (0, errno.EINPROGRESS):
                sock.close()
                self._failed(query, "error")
                continue
            exchange = _Tcp(
                query,
                server,
                sock,
                struct.pack("!H", ident),
                struct.pack("!H", len(wire)) + wire,
                now + self.timeout,
            )
            self.tcp.add(exchange)
            self.selector.register(sock, selectors.EVENT_WRITE, exchange)

    def _on_tcp(self, exchange: _Tcp, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self._tcp_write(exchange)
            else:
                self._tcp_read(exchange)
        except BlockingIOError:
            return
        except OSError:
            self._tcp_done(exchange)
            self._failed(exchange.query, "error")

    def _tcp_write(self, exchange: _Tcp) -> None:
        sock = exchange.sock
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, "connect failed")
        sent = sock.send(exchange.pending)
        exchange.pending = exchange.pending[sent:]
        if not exchange.pending:
            self.selector.modify(sock, selectors.EVENT_READ, exchange)

    def _tcp_read(self, exchange: _Tcp) -> None:
        data = exchange.sock.recv(65535)
        if not data:
            raise OSError(errno.ECONNRESET, "closed before a whole answer")
        exchange.received += data
        received = exchange.received
        if len(received) < 2 or len(received) < 2 + struct.unpack("!H", received[:2])[0]:
            return
        self._tcp_done(exchange)
        size = struct.unpack("!H", received[:2])[0]
        wire = bytes(received[2 : 2 + size])
        question = exchange.query.question
        if wire[:2] != exchange.ident or wire[12 : 12 + len(question)].lower() != question.lower():
            self._failed(exchange.query, "error")
            return
        self._on_answer(exchange.query, wire)

    def _tcp_done(self, exchange: _Tcp) -> None:
        self.tcp.discard(exchange)
        self.selector.unregister(exchange.sock)
        exchange.sock.close()


def _wire(name: dns.name.Name) -> bytes:
    """The uncompressed wire form of a name (to_wire without a file always returns bytes)."""
    wire = name.to_wire()
    assert wire is not None
    return wire


def _follow(
    message: dns.message.Message, query: _Query
) -> tuple[dns.name.Name, float, dns.rrset.RRset | None]:
    """Walk the answer's CNAME chain from the query's name.

    Returns where the chain ends, the smallest TTL met on the way (CNAMEs included), and
    the records of the wanted type there, or None. Counts hops on the query.
    """
    found: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for rrset in message.answer:
        if rrset.rdclass == _IN:
            found[(rrset.name, int(rrset.rdtype))] = rrset
    name, ttl = query.qname, query.chain_ttl
    while query.hops <= MAX_CHAIN:
        records = found.get((name, query.rdtype))
        if records is not None and len(records):
            return name, min(ttl, float(records.ttl)), records
        alias = found.get((name, _CNAME))
        target = next(iter(alias), None) if alias is not None else None
        if alias is None or not isinstance(target, dns.rdtypes.ANY.CNAME.CNAME):
            break
        ttl = min(ttl, float(alias.ttl))
        name = target.target
        query.hops += 1
    return name, ttl, None


def _addresses(records: Iterable[object]) -> tuple[str, ...]:
    found: list[str] = []
    for record in records:
        if isinstance(record, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
            canonical = canonical_address(str(record.address))
            if canonical is not None:
                found.append(canonical[1])
    return tuple(dict.fromkeys(found))


def _negative_ttl(message: dns.message.Message) -> float:
    """The SOA's negative-caching TTL (RFC 2308: the smaller of its TTL and MINIMUM)."""
    for rrset in message.authority:
        if rrset.rdtype == _SOA:
            for record in rrset:
                if isinstance(record, dns.rdtypes.ANY.SOA.SOA):
                    return float(min(rrset.ttl, record.minimum))
    return math.inf


def _known(ttl: float) -> float:
    return 0.0 if ttl == math.inf else ttl


__all__ = [
    "DEFINITE",
    "OUTCOMES",
    "RECORD_TYPES",
    "TRANSPORT_FAILURES",
    "Answer",
    "Lookup",
    "Outcome",
    "Resolver",
]
