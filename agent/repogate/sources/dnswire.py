"""DNS messages for the resolver: queries built, answers checked and judged. The only module
using dnspython.

dnspython encodes names and the EDNS record (`dns.message.make_query`) once, and parses
answers (`dns.message.from_wire`); queries are the template's bytes around each
question, and the commonest answer (no records: NODATA or NXDOMAIN) is judged from its
header alone, since parsing is the costliest step of a lookup.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

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

from repogate.addresses import canonical_address
from repogate.errors import SourceError
from repogate.sources.dnsanswer import Lookup, Outcome

MAX_CHAIN = 8  # CNAME hops followed before the name counts as a loop
EDNS_PAYLOAD = 1232  # the 2020 DNS flag day size: no IP fragmentation on common paths

Name = dns.name.Name
A = int(dns.rdatatype.A)
AAAA = int(dns.rdatatype.AAAA)
TYPE_NAMES = {A: "A", AAAA: "AAAA"}
_CNAME = int(dns.rdatatype.CNAME)
_SOA = int(dns.rdatatype.SOA)
_IN = int(dns.rdataclass.IN)
_TC = int(dns.flags.TC) >> 8  # in the header's third byte
_NOERROR = int(dns.rcode.NOERROR)
_NXDOMAIN = int(dns.rcode.NXDOMAIN)
_SERVFAIL = int(dns.rcode.SERVFAIL)
_RCODES: dict[int, Outcome] = {
    _SERVFAIL: "servfail",
    int(dns.rcode.REFUSED): "refused",
}

_TEMPLATE = dns.message.make_query(
    dns.name.root, dns.rdatatype.A, use_edns=0, payload=EDNS_PAYLOAD
).to_wire()
# The header without its id, then (after the root question: 1 + 4 bytes) the EDNS record.
_HEADER, _EDNS = _TEMPLATE[2:12], _TEMPLATE[17:]


def read_nameservers(path: str) -> tuple[str, ...]:
    """The nameservers a resolv.conf lists; SourceError if it cannot be read or lists none."""
    try:
        system = dns.resolver.Resolver(configure=False)
        system.read_resolv_conf(path)
    except (dns.exception.DNSException, OSError) as exc:
        raise SourceError(f"no nameservers: cannot use {path}: {exc}") from exc
    found = tuple(str(server) for server in system.nameservers)
    if not found:
        raise SourceError(f"no nameservers: {path} lists none")
    return found


def parse_name(text: str) -> Name | None:
    """The name to ask for, or None if `text` is not a valid DNS name."""
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException:
        return None


def question(name: Name, rdtype: int) -> bytes:
    """The wire form of a question section: uncompressed name, type, class IN."""
    wire = name.to_wire()
    assert wire is not None  # to_wire without a file always returns bytes
    return wire + struct.pack("!HH", rdtype, _IN)


def build(ident: int, asked: bytes) -> bytes:
    """A query's wire form: the template's header and EDNS record around `asked`."""
    return struct.pack("!H", ident) + _HEADER + asked + _EDNS


def matches(wire: bytes, ident: bytes, asked: bytes) -> bool:
    """Is `wire` a response to our query: same id, one question, the same question?

    Names compare case-insensitively (a server may change case; 0x20 is not used).
    A datagram that fails this is dropped, and the real answer may still come.
    """
    return (
        len(wire) >= 12 + len(asked)
        and wire[:2] == ident
        and bool(wire[2] & 0x80)  # a response
        and wire[4:6] == b"\x00\x01"
        and wire[12 : 12 + len(asked)].lower() == asked.lower()
    )


def truncated(wire: bytes) -> bool:
    return bool(wire[2] & _TC)


@dataclass
class Chain:
    """Where a lookup has got to: the name asked now, the names met, the smallest TTL."""

    name: str  # the name asked for at first, as given
    qname: Name
    seen: list[Name]
    ttl: float = math.inf


@dataclass(frozen=True)
class Verdict:
    """What an answer means: a final lookup, a failure worth a retry, or a name to ask next."""

    lookup: Lookup | None = None
    retry: Outcome | None = None
    detail: str = ""
    follow: Name | None = None  # the chain leaves the server's data: ask for this name


def judge(wire: bytes, chain: Chain, rdtype: int, server: str) -> Verdict:
    """Judge a matching answer from `server` to `chain.qname`; updates `chain` as it walks."""
    kind = TYPE_NAMES[rdtype]
    asked = f"{chain.qname.to_text(omit_final_dot=True)} {kind}"
    rcode = wire[3] & 0x0F
    if rcode in _RCODES:
        loop = _servfail_loop(wire, chain, rdtype) if rcode == _SERVFAIL else ""
        if loop:
            return Verdict(Lookup("loop", (), _known(chain.ttl), loop))
        return Verdict(
            retry=_RCODES[rcode], detail=f"{_RCODES[rcode].upper()} from {server} for {asked}"
        )
    if wire[6:10] == b"\0\0\0\0" and rcode in (_NOERROR, _NXDOMAIN):
        # No records at all (most negative answers: a client name without AAAA).
        return _negative(rcode, chain, chain.ttl, server)
    try:
        message = dns.message.from_wire(wire)
    except Exception as exc:  # anything from the network may be malformed; never stop the loop
        return Verdict(retry="error", detail=f"malformed answer from {server} for {asked}: {exc}")
    if rcode not in (_NOERROR, _NXDOMAIN):
        text = dns.rcode.to_text(dns.rcode.Rcode(rcode)) if rcode < 16 else str(rcode)
        return Verdict(retry="error", detail=f"{text} from {server} for {asked}")
    return _judge_records(message, rcode, chain, rdtype, server)


def _servfail_loop(wire: bytes, chain: Chain, rdtype: int) -> str:
    """What to tell the admin if a SERVFAIL carries a looping CNAME chain, else "".

    BIND answers a CNAME loop in its own zone with SERVFAIL and the looping records
    ("query iterations limit reached"). The loop, not the server, is what is broken, so
    it is a definite failure of the name like a loop answered NOERROR; read as SERVFAIL
    it would keep the name's old addresses until max_stale and never be reported.
    `chain` changes only if the answer does loop (a retry must start from it unchanged).
    """
    if wire[6:8] == b"\0\0":
        return ""
    try:
        message = dns.message.from_wire(wire)
    except Exception:  # a malformed SERVFAIL is still a SERVFAIL
        return ""
    walked = Chain(chain.name, chain.qname, list(chain.seen), chain.ttl)
    _records, loop = _follow(message, walked, rdtype)
    if loop:
        chain.seen[:], chain.ttl = walked.seen, walked.ttl
    return loop


def _judge_records(
    message: dns.message.Message, rcode: int, chain: Chain, rdtype: int, server: str
) -> Verdict:
    records, loop = _follow(message, chain, rdtype)
    if records is not None:
        return Verdict(Lookup("ok", _addresses(records), chain.ttl))
    if loop:
        return Verdict(Lookup("loop", (), _known(chain.ttl), loop))
    negative = _negative_ttl(message)
    if rcode == _NOERROR and chain.seen[-1] != chain.qname and negative == math.inf:
        # The chain leaves this server's data (an authoritative server for one zone
        # answers only the CNAME): ask for the target, as a stub resolver would.
        chain.qname = chain.seen[-1]
        return Verdict(follow=chain.qname)
    return _negative(rcode, chain, min(chain.ttl, negative), server)


def _negative(rcode: int, chain: Chain, ttl: float, server: str) -> Verdict:
    if rcode == _NXDOMAIN:
        where = _path(chain.seen)
        return Verdict(
            Lookup("nxdomain", (), _known(ttl), f"NXDOMAIN from {server}: {where} does not exist")
        )
    return Verdict(Lookup("nodata", (), _known(ttl)))


def _follow(
    message: dns.message.Message, chain: Chain, rdtype: int
) -> tuple[dns.rrset.RRset | None, str]:
    """Walk the answer's CNAME chain from `chain.qname`, adding the names met to `chain`.

    Returns the records of the wanted type where the chain ends (or None), and, if the
    chain loops or grows past MAX_CHAIN hops, what to tell the admin.
    """
    found: dict[tuple[Name, int], dns.rrset.RRset] = {}
    for rrset in message.answer:
        if rrset.rdclass == _IN:
            found[(rrset.name, int(rrset.rdtype))] = rrset
    name = chain.qname
    while True:
        records = found.get((name, rdtype))
        if records is not None and len(records):
            chain.ttl = min(chain.ttl, float(records.ttl))
            return records, ""
        alias = found.get((name, _CNAME))
        target = next(iter(alias), None) if alias is not None else None
        if alias is None or not isinstance(target, dns.rdtypes.ANY.CNAME.CNAME):
            return None, ""
        chain.ttl = min(chain.ttl, float(alias.ttl))
        name = target.target
        looped = name in chain.seen
        chain.seen.append(name)
        if looped:
            return None, f"CNAME loop at {chain.name}: {_path(chain.seen)}"
        if len(chain.seen) > MAX_CHAIN + 1:
            return None, f"CNAME chain from {chain.name} longer than {MAX_CHAIN} hops"


def _path(names: Iterable[Name]) -> str:
    return " -> ".join(name.to_text(omit_final_dot=True) for name in names)


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
