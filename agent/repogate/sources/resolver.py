"""Resolve many names at once: A and AAAA, CNAMEs followed, each query on its own random port.

Why a loop of our own rather than dnspython's resolvers: measured by
bench/dns_resolution.py (10,000 names, 20,000 queries, dnsmasq in a namespace, each
query on its own socket and random source port in every contender, 2 shared CPUs),
dnspython's own ways of asking many names took 2.3-6.7 times as long as this loop
(seconds, median of 3; PyPI's dnspython 2.9.2 / Debian bookworm's 2.3.0):

    repogate's loop (this module)                        2.53 / 3.15
    dns.asyncresolver under asyncio.gather, 128 at once  9.31 / 7.31   (3.7x / 2.3x)
    dns.resolver.Resolver in a pool of 32 threads       13.48 / 11.50  (5.3x / 3.7x)
    dns.resolver.Resolver in a pool of 128 threads      16.90 / 12.31  (6.7x / 3.9x)

(A port per query cost the loop about 1.4x against its former four shared sockets,
2.26 / 1.74 s.) The library stays well past 1.5x slower, so the project's rule (a
well-kept library over hand-written code, unless a measurement says otherwise) keeps
the loop; dnspython still builds every query and
parses every answer (repogate.sources.dnswire, the only module that imports it).

How a call works (repogate.sources.dnstransport): one selector loop keeps up to
`concurrency` queries in flight, each on its own UDP socket connected to its
nameserver, so each has a random ephemeral source port as well as a random query id,
and an answer counts only if it comes from that server and port and echoes the id
and question. A failed query is retried once, on the next nameserver and a new port;
a truncated answer is asked again over TCP; a server silent for two timeouts, or
refusing with ICMP port unreachable, is no longer asked; and the whole call gives up
at `deadline`, so it can never hang the daemon. The sockets open at once are bounded
by `concurrency` and by the process's RLIMIT_NOFILE (see `Resolver.limit`).

Each call keeps its own state (nothing shared), so one Resolver may be used by
several threads at once.

Outcomes, per name (A and AAAA combined, see `Answer.combine`), each failure with a
`detail` saying what happened:

    ok        at least one address
    nodata    the name exists but has no A or AAAA record
    nxdomain  the name does not exist                      } definite failures of the
    loop      its CNAME chain loops or exceeds MAX_CHAIN   } name: its old addresses go
    servfail, refused, timeout, error
              transport-level failures: the answer says nothing about the name, and
              its last known good addresses are kept (see repogate.sources.dns)
"""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterable, Sequence

from repogate.sources.dnsanswer import (
    BROKEN_NAME,
    DEFINITE,
    OUTCOMES,
    RECORD_TYPES,
    TRANSPORT_FAILURES,
    Answer,
    Lookup,
    Outcome,
)
from repogate.sources.dnstransport import Run, Server
from repogate.sources.dnswire import MAX_CHAIN, read_nameservers

RESOLV_CONF = "/etc/resolv.conf"
FD_RESERVE = 64  # descriptors left for the rest of the daemon (state files, nft, metrics)


class Resolver:
    """Resolves names against `nameservers` (empty: those in /etc/resolv.conf, read per call).

    `timeout` is per attempt; `deadline` bounds a whole `resolve_many` call, whatever
    the nameservers do; `concurrency` bounds the queries (and so sockets) in flight.
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

    def __repr__(self) -> str:
        servers = ", ".join(self.nameservers) or f"from {self.resolv_conf}"
        return f"Resolver({servers}, port={self.port})"

    def servers(self) -> tuple[str, ...]:
        """The nameservers a call would ask now; SourceError if there are none."""
        if self.nameservers:
            return self.nameservers
        return read_nameservers(self.resolv_conf)

    def limit(self) -> int:
        """Queries in flight for one call: `concurrency`, or less if descriptors are short.

        Each query holds one socket. Half the descriptors still free (after FD_RESERVE)
        may be used, so two calls from two threads together stay within the limit; a
        socket the kernel still refuses makes the call wait for one in flight instead.
        """
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.concurrency
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:
            in_use = 0
        return max(1, min(self.concurrency, (soft - in_use - FD_RESERVE) // 2))

    def resolve_many(self, names: Iterable[str]) -> dict[str, Answer]:
        """A and AAAA for every name (duplicates asked once); never blocks past `deadline`."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        servers = [open_server(text, self.port) for text in self.servers()]
        run = Run(wanted, servers, timeout=self.timeout, deadline=self.deadline, limit=self.limit())
        return run.run()


def open_server(text: str, port: int) -> Server:
    """A nameserver by its numeric address; down (an error) if it is not one."""
    try:
        info = socket.getaddrinfo(text, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except OSError as exc:
        return Server(text, socket.AF_INET, (), down="error", why=f"bad nameserver {text!r}: {exc}")
    family, _type, _proto, _name, address = info[0]
    return Server(text, family, tuple(address))


__all__ = [
    "BROKEN_NAME",
    "DEFINITE",
    "MAX_CHAIN",
    "OUTCOMES",
    "RECORD_TYPES",
    "TRANSPORT_FAILURES",
    "Answer",
    "Lookup",
    "Outcome",
    "Resolver",
]
