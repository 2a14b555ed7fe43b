"""The resolver and DNS sources against real DNS servers.

Two kinds of server:

- a scripted one on the host's loopback (no root): a thread answering what each test
  says, for what dnsmasq will not do (an authoritative server's bare CNAME, forged and
  late answers, SERVFAIL from one nameserver, silence, CNAME loops);
- dnsmasq in a throwaway network namespace (root): records, CNAME chains, TTLs, a name
  moving while the source runs, a stopped or frozen server, 2,000 names at speed. The
  resolver runs inside the namespace in a worker process (lab.dns.ResolverWorker).
"""

from __future__ import annotations

import os
import resource
import secrets
import selectors
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from lab.dns import Cname, DnsServer, HostRecord, ResolverWorker, numbered_hosts
from lab.netns import add_netns, delete_netns
from repogate.errors import SourceError
from repogate.sources.resolver import Resolver

# --- a scripted server on loopback -------------------------------------------------------

Handler = Callable[[dns.message.Message, bool], list[bytes]]


def reply(
    query: dns.message.Message,
    *records: tuple[str, int, str, str],
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    authority: tuple[tuple[str, int, str, str], ...] = (),
    truncated: bool = False,
) -> bytes:
    """An answer to `query` with (name, ttl, type, data) records."""
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for name, ttl, rdtype, data in records:
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, data))
    for name, ttl, rdtype, data in authority:
        response.authority.append(dns.rrset.from_text(name, ttl, "IN", rdtype, data))
    if truncated:
        response.flags |= dns.flags.TC
        response.answer = []
    return response.to_wire(max_size=65535)  # TCP answers may exceed the query's EDNS size


def question(query: dns.message.Message) -> tuple[str, str]:
    asked = query.question[0]
    return asked.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(asked.rdtype)


class ScriptedServer:
    """UDP and TCP on one loopback address and port; `handler` says what to send back."""

    def __init__(self, handler: Handler, address: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, port))
        self.address, self.port = self.udp.getsockname()
        self.tcp = socket.create_server((address, self.port))
        self.asked: list[tuple[str, str, bool]] = []
        self.ports: list[int] = []  # the source port of each UDP query (0: TCP)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.udp, selectors.EVENT_READ)
            selector.register(self.tcp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _mask in selector.select(0.05):
                    if key.fileobj is self.udp:
                        data, peer = self.udp.recvfrom(65535)
                        for wire in self._answer(data, tcp=False, port=peer[1]):
                            self.udp.sendto(wire, peer)
                    else:
                        self._serve_tcp()

    def _serve_tcp(self) -> None:
        conn, _peer = self.tcp.accept()
        with conn:
            conn.settimeout(2)
            size = struct.unpack("!H", conn.recv(2))[0]
            data = b""
            while len(data) < size:
                data += conn.recv(size - len(data))
            for wire in self._answer(data, tcp=True):
                conn.sendall(struct.pack("!H", len(wire)) + wire)

    def _answer(self, data: bytes, *, tcp: bool, port: int = 0) -> list[bytes]:
        query = dns.message.from_wire(data)
        self.asked.append((*question(query), tcp))
        self.ports.append(port)
        return self.handler(query, tcp)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(handler: Handler, address: str = "127.0.0.1", port: int = 0) -> ScriptedServer:
        server = ScriptedServer(handler, address, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_bare_cname_is_followed_to_its_target(scripted: Callable[..., ScriptedServer]) -> None:
    """An authoritative server answers only the CNAME; the resolver asks for the target."""

    def handler(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        name, rdtype = question(query)
        if name == "alias.example":
            return [reply(query, ("alias.example.", 30, "CNAME", "real.example.net."))]
        if rdtype == "A":
            return [reply(query, ("real.example.net.", 300, "A", "192.0.2.7"))]
        soa = ("example.net.", 900, "SOA", "ns. host. 1 2 3 4 60")
        return [reply(query, authority=(soa,))]

    server = scripted(handler)
    answer = Resolver(["127.0.0.1"], port=server.port, timeout=1).resolve_many(["alias.example"])[
        "alias.example"
    ]
    assert answer.outcome == "ok"
    assert answer.addresses == ("192.0.2.7",)
    assert answer.ttl == 30  # the CNAME's, the smallest of the records used
    assert answer.lookups["AAAA"].outcome == "nodata"
    assert answer.lookups["AAAA"].ttl == 30  # min(CNAME 30, SOA negative TTL 60)
    assert ("real.example.net", "A", False) in server.asked


def test_cname_loop_is_a_loop_at_its_name(scripted: Callable[..., ScriptedServer]) -> None:
    """A loop is a definite failure of the name, and says where it loops."""

    def handler(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        return [
            reply(
                query,
                ("a.example.", 30, "CNAME", "b.example."),
                ("b.example.", 30, "CNAME", "a.example."),
            )
        ]

    server = scripted(handler)
    answer = Resolver(["127.0.0.1"], port=server.port, timeout=1).resolve_many(["a.example"])
    assert answer["a.example"].outcome == "loop"
    assert answer["a.example"].detail == (
        "CNAME loop at a.example: a.example -> b.example -> a.example"
    )


def test_cname_loop_answered_servfail_is_still_a_loop(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """BIND answers a loop in its zone with SERVFAIL and the looping records (seen in the
    DNS fault suite): still a loop, not a server failure that keeps the old addresses."""

    def handler(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        name, _rdtype = question(query)
        if name == "plain.example":  # a chain that does not loop: a plain SERVFAIL
            alias = ("plain.example.", 30, "CNAME", "x.example.")
            return [reply(query, alias, rcode=dns.rcode.SERVFAIL)]
        return [
            reply(
                query,
                ("a.example.", 30, "CNAME", "b.example."),
                ("b.example.", 30, "CNAME", "a.example."),
                rcode=dns.rcode.SERVFAIL,
            )
        ]

    server = scripted(handler)
    resolver = Resolver(["127.0.0.1"], port=server.port, timeout=1)
    answers = resolver.resolve_many(["a.example", "plain.example"])
    assert answers["a.example"].outcome == "loop"
    assert answers["a.example"].detail == (
        "CNAME loop at a.example: a.example -> b.example -> a.example"
    )
    assert answers["plain.example"].outcome == "servfail"


def test_forged_and_mismatched_answers_are_ignored(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """Wrong id or wrong question: dropped, and the real answer behind it still counts."""

    def handler(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        name, rdtype = question(query)
        forged_id = dns.message.from_wire(reply(query, (f"{name}.", 60, rdtype, _data(rdtype))))
        forged_id.id = (query.id + 1) & 0xFFFF
        other = dns.message.make_query("evil.example", rdtype)
        other.id = query.id
        wrong_question = reply(other, ("evil.example.", 60, rdtype, _data(rdtype, 66)))
        real = reply(query, (f"{name}.", 60, rdtype, _data(rdtype)))
        return [forged_id.to_wire(), wrong_question, real]

    server = scripted(handler)
    answer = Resolver(["127.0.0.1"], port=server.port, timeout=1).resolve_many(["x.example"])
    assert answer["x.example"].addresses == ("192.0.2.1", "2001:db8::1")


def test_each_query_has_its_own_random_port(scripted: Callable[..., ScriptedServer]) -> None:
    """A forger must guess the port as well as the id: no two queries share one."""

    def handler(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        name, rdtype = question(query)
        return [reply(query, (f"{name}.", 60, rdtype, _data(rdtype)))]

    server = scripted(handler)
    names = [f"n{i}.example" for i in range(300)]
    resolver = Resolver(["127.0.0.1"], port=server.port, timeout=1, concurrency=16)
    answers = resolver.resolve_many(names)
    assert {a.outcome for a in answers.values()} == {"ok"}
    assert len(server.ports) == 600
    # The kernel picks each at random from ip_local_port_range: repeats are rare, not zero.
    assert len(set(server.ports)) > 550
    low, high = min(server.ports), max(server.ports)
    assert high - low > 10_000, "spread over the range, not counted up from one port"


def test_sockets_in_flight_are_bounded_by_the_descriptor_limit() -> None:
    resolver = Resolver(["127.0.0.1"], concurrency=10_000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 64 + 40, hard))
        assert resolver.limit() <= 20
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert resolver.limit() == min(10_000, (soft - len(os.listdir("/proc/self/fd")) - 64) // 2)


def _data(rdtype: str, last: int = 1) -> str:
    return f"192.0.2.{last}" if rdtype == "A" else f"2001:db8::{last}"


def test_truncated_answer_is_asked_again_over_tcp(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def handler(query: dns.message.Message, tcp: bool) -> list[bytes]:
        name, rdtype = question(query)
        if rdtype == "AAAA":
            return [reply(query)]
        if not tcp:
            return [reply(query, truncated=True)]
        records = [(f"{name}.", 60, "A", f"192.0.2.{i}") for i in range(1, 201)]
        return [reply(query, *records)]

    server = scripted(handler)
    answer = Resolver(["127.0.0.1"], port=server.port, timeout=1).resolve_many(["big.example"])
    assert len(answer["big.example"].addresses) == 200
    assert ("big.example", "A", True) in server.asked


def test_servfail_detail_names_server_and_question(
    scripted: Callable[..., ScriptedServer],
) -> None:
    server = scripted(lambda query, _tcp: [reply(query, rcode=dns.rcode.SERVFAIL)])
    answer = Resolver(["127.0.0.1"], port=server.port, timeout=1).resolve_many(["s.example"])
    assert answer["s.example"].outcome == "servfail"
    assert answer["s.example"].detail == "SERVFAIL from 127.0.0.1 for s.example A"


def test_servfail_is_retried_on_the_next_nameserver(
    scripted: Callable[..., ScriptedServer],
) -> None:
    def failing(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        return [reply(query, rcode=dns.rcode.SERVFAIL)]

    def working(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        name, rdtype = question(query)
        return [reply(query, (f"{name}.", 60, rdtype, _data(rdtype)))]

    bad = scripted(failing, "127.0.0.1")
    try:
        good = scripted(working, "127.0.0.2", bad.port)
    except OSError:
        pytest.skip("127.0.0.2 has that port in use")
    names = [f"n{i}.example" for i in range(20)]
    answers = Resolver(["127.0.0.1", "127.0.0.2"], port=bad.port, timeout=1).resolve_many(names)
    assert {a.outcome for a in answers.values()} == {"ok"}
    assert bad.asked and good.asked  # queries were spread over both
    only_bad = Resolver(["127.0.0.1"], port=bad.port, timeout=1).resolve_many(["n.example"])
    assert only_bad["n.example"].outcome == "servfail"


def test_silence_ends_in_timeouts_within_the_deadline(
    scripted: Callable[..., ScriptedServer],
) -> None:
    server = scripted(lambda _query, _tcp: [])
    names = [f"n{i}.example" for i in range(1000)]
    started = time.monotonic()
    answers = Resolver(["127.0.0.1"], port=server.port, timeout=0.2).resolve_many(names)
    elapsed = time.monotonic() - started
    assert {a.outcome for a in answers.values()} == {"timeout"}
    assert "no answer from 127.0.0.1" in answers["n0.example"].detail
    assert elapsed < 1.0, "a silent server is given up after two timeouts, not per batch"
    capped = Resolver(["127.0.0.1"], port=server.port, timeout=30, deadline=0.3)
    started = time.monotonic()
    assert capped.resolve_many(["n.example"])["n.example"].outcome == "timeout"
    assert time.monotonic() - started < 1.0


def test_closed_port_fails_fast() -> None:
    """Nothing listening: ICMP port unreachable ends the call at once, as an error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    answers = Resolver(["127.0.0.1"], port=port, timeout=5).resolve_many(["a.example"])
    assert answers["a.example"].outcome == "error"
    assert "ICMP port unreachable" in answers["a.example"].detail
    assert time.monotonic() - started < 1.0


def test_nxdomain_takes_the_soa_negative_ttl(scripted: Callable[..., ScriptedServer]) -> None:
    def handler(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        soa = ("example.", 900, "SOA", "ns. host. 1 2 3 4 45")
        return [reply(query, rcode=dns.rcode.NXDOMAIN, authority=(soa,))]

    server = scripted(handler)
    answer = Resolver(["127.0.0.1"], port=server.port, timeout=1).resolve_many(["gone.example"])
    assert answer["gone.example"].outcome == "nxdomain"
    assert answer["gone.example"].ttl == 45


def test_no_nameservers_means_resolv_conf(
    scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    def handler(query: dns.message.Message, _tcp: bool) -> list[bytes]:
        name, rdtype = question(query)
        return [reply(query, (f"{name}.", 60, rdtype, _data(rdtype)))]

    server = scripted(handler)
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("# written by a test\nnameserver 127.0.0.1\noptions edns0\n")
    resolver = Resolver(port=server.port, timeout=1, resolv_conf=str(resolv_conf))
    assert resolver.servers() == ("127.0.0.1",)
    assert resolver.resolve_many(["a.example"])["a.example"].outcome == "ok"
    missing = Resolver(resolv_conf=str(tmp_path / "absent.conf"))
    with pytest.raises(SourceError, match="no nameservers"):
        missing.resolve_many(["a.example"])


# --- dnsmasq in a namespace (root) ---------------------------------------------------------

needs_dnsmasq = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("dnsmasq") is None,
    reason="needs root, iproute2 and dnsmasq (apt install dnsmasq-base) for a namespace",
)
SERVER = "127.0.0.1"
TTL = 2


@dataclass
class DnsLab:
    netns: str
    server: DnsServer
    worker: ResolverWorker

    def resolve(self, names: list[str], **settings: Any) -> dict[str, Any]:
        return self.worker.call(
            "resolve", nameservers=[SERVER], timeout=settings.pop("timeout", 1.0), names=names
        )

    def source(self, names: list[str], **settings: Any) -> str:
        ident = secrets.token_hex(3)
        settings.setdefault("timeout", 1.0)
        self.worker.call("source", id=ident, names=names, nameservers=[SERVER], **settings)
        return ident

    def fetch(self, ident: str) -> dict[str, Any]:
        return self.worker.call("fetch", id=ident)


@pytest.fixture
def dns_lab(tmp_path: Path) -> Iterator[DnsLab]:
    netns = f"rgdns{secrets.token_hex(4)}"
    add_netns(netns)
    try:
        hosts = numbered_hosts(2000)
        hosts["www.lab.test"] = ("10.1.0.1", "2001:db8:1::1")
        hosts["home.lab.test"] = ("198.51.100.7",)
        hosts["v6only.lab.test"] = ("2001:db8:1::6",)
        server = DnsServer(
            tmp_path / "dns",
            netns=netns,
            address=SERVER,
            ttl=TTL,
            hosts=hosts,
            records=[
                HostRecord("slow.lab.test", ("10.1.0.9",), 30),
                HostRecord("quick.lab.test", ("10.1.0.10",), 1),
            ],
            cnames=[
                Cname("alias.lab.test", "www.lab.test", 1),
                Cname("alias2.lab.test", "alias.lab.test", 5),
            ],
        )
        with server, ResolverWorker(netns) as worker:
            yield DnsLab(netns, server, worker)
    finally:
        delete_netns(netns)


@pytest.mark.root
@needs_dnsmasq
def test_records_chains_and_ttls(dns_lab: DnsLab) -> None:
    names = [
        "www.lab.test",
        "alias2.lab.test",
        "v6only.lab.test",
        "slow.lab.test",
        "nope.lab.test",
        "elsewhere.example",
    ]
    answers = dns_lab.resolve(names)["answers"]
    www = answers["www.lab.test"]
    assert (www["outcome"], www["addresses"], www["ttl"]) == (
        "ok",
        ["10.1.0.1", "2001:db8:1::1"],
        TTL,
    )
    chained = answers["alias2.lab.test"]  # alias2 -> alias (TTL 1) -> www
    assert (chained["outcome"], chained["addresses"]) == ("ok", ["10.1.0.1", "2001:db8:1::1"])
    assert chained["ttl"] == 1
    v6only = answers["v6only.lab.test"]
    assert v6only["addresses"] == ["2001:db8:1::6"]
    assert v6only["lookups"]["A"]["outcome"] == "nodata"
    assert answers["slow.lab.test"]["ttl"] == 30
    assert answers["nope.lab.test"]["outcome"] == "nxdomain"
    assert answers["elsewhere.example"]["outcome"] == "refused"  # dnsmasq has no upstream


@pytest.mark.root
@needs_dnsmasq
def test_moved_name_is_seen_within_its_ttl(dns_lab: DnsLab) -> None:
    source = dns_lab.source(["home.lab.test", "www.lab.test"], min_refresh=1, max_refresh=60)
    first = dns_lab.fetch(source)
    assert "198.51.100.7" in first["addresses"]
    assert first["refresh_in"] == pytest.approx(TTL, abs=0.1)
    dns_lab.server.set_hosts({"home.lab.test": ["198.51.100.99"]})
    moved_at = time.monotonic()
    result = first
    while "198.51.100.99" not in result["addresses"]:
        assert time.monotonic() - moved_at <= TTL + 1, "not seen within TTL + 1 s"
        time.sleep(min(result["refresh_in"], 0.5))
        result = dns_lab.fetch(source)
    assert time.monotonic() - moved_at <= TTL + 1
    assert "198.51.100.7" not in result["addresses"], "the old address goes at once"


@pytest.mark.root
@needs_dnsmasq
def test_removed_name_is_nxdomain_and_dropped(dns_lab: DnsLab) -> None:
    source = dns_lab.source(["home.lab.test", "www.lab.test"], min_refresh=1)
    assert "198.51.100.7" in dns_lab.fetch(source)["addresses"]
    dns_lab.server.set_hosts({"home.lab.test": []})
    time.sleep(TTL + 0.1)
    result = dns_lab.fetch(source)
    assert result["outcomes"] == {"nxdomain": 1, "ok": 1}
    assert "198.51.100.7" not in result["addresses"]


@pytest.mark.root
@needs_dnsmasq
def test_dead_resolver_raises_source_error(dns_lab: DnsLab) -> None:
    """Stopped (port closed: errors at once) or frozen (timeouts): the source fails as a whole."""
    source = dns_lab.source(["quick.lab.test"], min_refresh=1, timeout=0.3)  # TTL 1
    assert dns_lab.fetch(source)["addresses"] == ["10.1.0.10"]
    dns_lab.server.pause()
    time.sleep(1.05)
    frozen = dns_lab.fetch(source)
    assert frozen["error"] and "reachable" in frozen["error"]
    assert frozen["outcomes"] == {"timeout": 1}
    assert frozen["seconds"] < 1.5  # two attempts of 0.3 s, then given up
    dns_lab.server.stop()
    time.sleep(1.05)  # a failing name is asked again after min_refresh
    stopped = dns_lab.fetch(source)
    assert stopped["error"] and stopped["outcomes"] == {"error": 1}
    assert stopped["seconds"] < 0.5


@pytest.mark.root
@needs_dnsmasq
def test_two_thousand_names_in_under_two_seconds(dns_lab: DnsLab) -> None:
    names = list(numbered_hosts(2000))
    reply = dns_lab.resolve(names)
    outcomes = {answer["outcome"] for answer in reply["answers"].values()}
    assert outcomes == {"ok"}
    assert reply["answers"]["h1999.lab.test"]["addresses"] == ["10.0.7.207"]
    assert reply["seconds"] < 2.0, f"{reply['seconds']:.2f}s for 2,000 names"
