"""DNS sources: client groups of dynamic-DNS names, and a destination's `hosts`.

Both keep a per-name cache and, at each `fetch()`, resolve only the names whose TTL
has run out (all of them the first time). A name's next refresh is its TTL clamped to
[min_refresh, max_refresh]; `refresh_in` tells the daemon when the earliest one is due,
so 10,000 names cost one batch per TTL and not one query per name per interval.
A and AAAA are judged apart: when only AAAA times out, the IPv4 half is still fresh.

The two differ in which way is safe when DNS changes or fails:

- Client names (`DnsSource`): an address a name no longer has is removed at once,
  since the ISP may hand it to a stranger. A transport failure (timeout, SERVFAIL,
  REFUSED, error) says nothing about the name, so it keeps its last known addresses
  until `max_stale` after its last answer. A definite failure of the name itself
  (NXDOMAIN: it is gone; a CNAME loop: its zone is broken, and asking again will not
  mend it) is an answer: its addresses go at once, as for a moved name.
- Destination hosts (`HostsSource`): removing an address from a destination stops
  gating traffic to it, for everyone. So an address that left DNS lingers for the
  destination's `linger` (clients may still use a cached answer), and a host that
  fails keeps its addresses for as long as it fails: DNS trouble never opens a gate.

A name that serves no address because it failed (a definite failure, or a transport
failure past `max_stale`) is reported in the result's `rejected_count` and
`rejected_sample` with what happened ("CNAME loop at a.example: a.example ->
b.example -> a.example"), so one broken name in a healthy group is seen, not silent.

If every name asked in a fetch fails at the transport level (timeout, SERVFAIL,
REFUSED, error) and no other name of the source has a good answer either, the
resolver is unreachable rather than some names broken: `fetch()` raises SourceError
saying what happened (timeouts and errors: is the resolver reachable?; SERVFAIL or
REFUSED: from which server, for which name), and the caller serves the source's last
known good (marked stale). Partial failures are not an error, and neither is one broken
name that happens to be due alone (its neighbours' answers, asked moments ago, show the
resolver works).

Names due within `DUE_SLACK` seconds of each other are resolved in one batch, so a
group stays a few batches rather than drifting apart into one query per wake-up.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from repogate.addresses import NormalisedEntries, Rejected, element_order
from repogate.config.schema import Destination, DnsClients
from repogate.errors import SourceError
from repogate.sources import SourceResult
from repogate.sources.dnsanswer import (
    DEFINITE,
    RECORD_TYPES,
    TRANSPORT_FAILURES,
    Answer,
    Lookup,
)

DUE_SLACK = 1.0  # seconds: names due this soon are resolved with the ones due now
REJECTED_SAMPLE = 10


class Resolves(Protocol):
    """What the sources need of a resolver (repogate.sources.resolver.Resolver, or a test fake)."""

    def resolve_many(self, names: Iterable[str]) -> Mapping[str, Answer]: ...


@dataclass
class _Name:
    """What one name resolved to, per record type, and when to ask again."""

    addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "A"/"AAAA" -> addrs
    last_ok_at: dict[str, float] = field(default_factory=dict)  # per type: last definite answer
    due_at: float = 0.0
    failing: bool = True  # its last answer was a transport failure (or it was never asked)
    problem: str = ""  # what went wrong in its last answer, if it was not ok or nodata

    def current(self) -> list[str]:
        found = {address for kind in RECORD_TYPES for address in self.addresses.get(kind, ())}
        return sorted(found, key=element_order)


class _DnsCache:
    """Per-name TTL scheduling shared by both sources; what a failure keeps is theirs."""

    def __init__(
        self,
        names: Sequence[str],
        resolver: Resolves,
        clock: Callable[[], float],
        min_refresh: float,
        max_refresh: float,
    ) -> None:
        self.names = tuple(dict.fromkeys(names))
        self.resolver = resolver
        self.clock = clock
        self.min_refresh = min_refresh
        self.max_refresh = max_refresh
        # due_at 0: every name is due at the first fetch.
        self.state: dict[str, _Name] = {name: _Name() for name in self.names}
        self.last_outcomes: dict[str, int] = {}

    def due(self, now: float) -> list[str]:
        return [name for name in self.names if self.state[name].due_at <= now + DUE_SLACK]

    def refresh(self, now: float, keep: Callable[[_Name, str, Lookup, float], bool]) -> None:
        """Resolve the due names and update their addresses.

        `keep(state, kind, lookup, now)` decides, for a failed lookup, whether the
        name keeps what it had for that record type. Raises SourceError when every
        name asked failed at the transport level and no other name is doing better.
        """
        due = self.due(now)
        if not due:
            self.last_outcomes = {}
            return
        answers = self.resolver.resolve_many(due)
        outcomes: Counter[str] = Counter()
        example = ""
        for name in due:
            answer = answers.get(name) or Answer(
                name, (), 0.0, "error", detail=f"no answer for {name}"
            )
            outcomes[answer.outcome] += 1
            self._apply(self.state[name], answer, now, keep)
            example = example or self.state[name].problem
        self.last_outcomes = dict(outcomes)
        if all(outcome in TRANSPORT_FAILURES for outcome in outcomes) and all(
            state.failing for state in self.state.values()
        ):
            summary = ", ".join(f"{count} {outcome}" for outcome, count in outcomes.most_common())
            if set(outcomes) <= {"timeout", "error"}:
                hint = f"is the resolver reachable? ({self.resolver!r})"
            else:
                hint = f"the resolver answers but will not resolve them ({self.resolver!r})"
            raise SourceError(
                f"no DNS answer for any of {len(due)} names ({summary}; e.g. {example}); {hint}"
            )

    def rejected(self) -> tuple[int, list[Rejected]]:
        """Names serving no address because they failed, with what happened to each."""
        found = [
            Rejected(name, name, state.problem)
            for name, state in self.state.items()
            if state.problem and not state.current()
        ]
        return len(found), found[:REJECTED_SAMPLE]

    def _apply(
        self,
        state: _Name,
        answer: Answer,
        now: float,
        keep: Callable[[_Name, str, Lookup, float], bool],
    ) -> None:
        state.failing = answer.outcome in TRANSPORT_FAILURES
        state.problem = "" if answer.outcome in ("ok", "nodata") else answer.reason()
        complete = True
        for kind in RECORD_TYPES:
            lookup = answer.lookup(kind)
            if lookup.outcome in DEFINITE:
                state.addresses[kind] = lookup.addresses
                state.last_ok_at[kind] = now
            else:
                complete = False
                if not keep(state, kind, lookup, now):
                    state.addresses.pop(kind, None)
        # A failed half is asked again soon; a complete answer lives for its TTL.
        ttl = answer.ttl if complete else 0.0
        state.due_at = now + min(max(ttl, self.min_refresh), self.max_refresh)

    def refresh_in(self, now: float, *others: float) -> float:
        due = min((state.due_at for state in self.state.values()), default=now)
        return max(0.0, min([due, *others]) - now)


class DnsSource:
    """A client group of DNS names (`type = "dns"`); see the module docstring for the rules.

    `max_stale` is the group's (`Config.max_stale(group)`): how long after a name's last
    answer a failing name keeps its addresses. Per name and family, at most
    `group.max_addresses` addresses are used (the lowest, so the choice is stable; per
    family, so a name with many A records keeps its AAAA); the rest are rejected.
    """

    def __init__(
        self,
        group: DnsClients,
        resolver: Resolves,
        *,
        max_stale: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = group.name
        self.group = group
        self.max_stale = max_stale
        self._cache = _DnsCache(group.names, resolver, clock, group.min_refresh, group.max_refresh)

    @property
    def last_outcomes(self) -> dict[str, int]:
        """Names per outcome (ok, nodata, nxdomain, loop, timeout, ...) in the last fetch."""
        return self._cache.last_outcomes

    def signature(self) -> object | None:
        return None  # due names are known only to fetch()

    def fetch(self) -> SourceResult:
        now = self._cache.clock()
        self._cache.refresh(now, self._keep)
        cap = self.group.max_addresses
        v4: set[str] = set()
        v6: set[str] = set()
        rejected_count, rejected = self._cache.rejected()
        for name in self._cache.names:
            addresses = self._cache.state[name].current()
            by_family = (
                ("4", v4, [a for a in addresses if ":" not in a]),
                ("6", v6, [a for a in addresses if ":" in a]),
            )
            for version, family, found in by_family:
                family.update(found[:cap])
                extra = found[cap:]
                rejected_count += len(extra)
                reason = (
                    f"{name} has {len(found)} IPv{version} addresses, "
                    f"more than max_addresses = {cap}"
                )
                for address in extra[: max(0, REJECTED_SAMPLE - len(rejected))]:
                    rejected.append(Rejected(name, address, f"{address}: {reason}"))
        entries = NormalisedEntries(frozenset(v4), frozenset(v6), frozenset(), frozenset())
        return SourceResult(
            entries=entries,
            accepted=len(entries),
            rejected_count=rejected_count,
            rejected_sample=tuple(rejected),
            origin=f"{len(self._cache.names)} DNS names",
            refresh_in=self._cache.refresh_in(now),
        )

    def _keep(self, state: _Name, kind: str, lookup: Lookup, now: float) -> bool:
        last = state.last_ok_at.get(kind)
        return last is not None and now - last <= self.max_stale


class HostsSource:
    """A destination's `hosts`, resolved to single addresses (see the module docstring).

    Raises SourceError only when every host asked failed; the caller then keeps the
    destination's last known good, which never expires (dropping a destination address
    would stop gating it).
    """

    def __init__(
        self,
        destination: Destination,
        resolver: Resolves,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = destination.name
        self.destination = destination
        self._cache = _DnsCache(
            destination.hosts, resolver, clock, destination.min_refresh, destination.max_refresh
        )
        self._lingering: dict[str, float] = {}  # address -> when it stops being gated

    @property
    def last_outcomes(self) -> dict[str, int]:
        return self._cache.last_outcomes

    def signature(self) -> object | None:
        return None

    def fetch(self) -> SourceResult:
        now = self._cache.clock()
        before = self._current()
        self._cache.refresh(now, _keep_while_failing)
        current = self._current()
        linger = self.destination.linger
        for address in before - current:
            self._lingering.setdefault(address, now + linger)
        for address in current:
            self._lingering.pop(address, None)
        for address, until in list(self._lingering.items()):
            if until <= now:
                del self._lingering[address]
        kept = current | set(self._lingering)
        entries = NormalisedEntries(
            frozenset(a for a in kept if ":" not in a),
            frozenset(a for a in kept if ":" in a),
            frozenset(),
            frozenset(),
        )
        rejected_count, rejected = self._cache.rejected()
        origin = f"{len(self._cache.names)} hosts"
        if self._lingering:
            origin += f", {len(self._lingering)} addresses lingering"
        return SourceResult(
            entries=entries,
            accepted=len(entries),
            rejected_count=rejected_count,
            rejected_sample=tuple(rejected),
            origin=origin,
            refresh_in=self._cache.refresh_in(now, *self._lingering.values()),
        )

    def _current(self) -> set[str]:
        return {a for state in self._cache.state.values() for a in state.current()}


def _keep_while_failing(_state: _Name, _kind: str, _lookup: Lookup, _now: float) -> bool:
    """Destination hosts keep their addresses through any DNS failure."""
    return True
