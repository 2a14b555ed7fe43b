"""What the resolver says about a name: per record type (`Lookup`) and combined (`Answer`).

A leaf module without dnspython, so the DNS sources and their tests can build answers
without the resolver. The outcomes, and what a DNS source does with each (see
repogate.sources.dns), fall in three kinds:

    ok, nodata     answers: the name's addresses are what it says (none for nodata)
    nxdomain, loop definite failures of the name itself: it does not exist, or its CNAME
                   chain loops (or runs past MAX_CHAIN hops). Asking again will not
                   help, so its old addresses go, and the source reports it as rejected
    servfail, refused, timeout, error
                   transport failures: the resolver could not be asked or would not say,
                   which says nothing about the name, so its last known addresses stay

Every lookup that is not ok carries a `detail` for the admin: what happened, from
which server, for which name ("CNAME loop at a.example: a.example -> b.example ->
a.example", "SERVFAIL from 10.0.0.53 for x.example A").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from repogate.addresses import element_order

Outcome = Literal["ok", "nodata", "nxdomain", "loop", "servfail", "refused", "timeout", "error"]
OUTCOMES: tuple[Outcome, ...] = (
    "ok",
    "nodata",
    "nxdomain",
    "loop",
    "servfail",
    "refused",
    "timeout",
    "error",
)
# Failures that say nothing about the name: the resolver could not be asked or would not say.
TRANSPORT_FAILURES: frozenset[str] = frozenset({"servfail", "refused", "timeout", "error"})
# Outcomes that say something definite about the name: its addresses are replaced.
DEFINITE: frozenset[str] = frozenset({"ok", "nodata", "nxdomain", "loop"})
# Definite failures: the name itself is broken, and a source reports it as rejected.
BROKEN_NAME: frozenset[str] = frozenset({"nxdomain", "loop"})

RECORD_TYPES: tuple[str, ...] = ("A", "AAAA")


@dataclass(frozen=True)
class Lookup:
    """One record type's result for a name."""

    outcome: Outcome
    addresses: tuple[str, ...] = ()  # canonical text (repogate.addresses.canonical_address)
    ttl: float = 0.0  # records used, CNAMEs included; negative answers: the SOA's; else 0
    detail: str = ""  # what went wrong, for the admin; empty when ok


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
    detail: str = ""  # the deciding lookup's detail

    @classmethod
    def combine(cls, name: str, lookups: Mapping[str, Lookup]) -> Answer:
        """One answer from per-type lookups.

        ok if any type gave addresses; then nxdomain or loop if any type said so (they
        are properties of the name, not of a type); nodata only if every type said so;
        else the first transport failure. The TTL is the smallest of the lookups that
        gave addresses, or of the definite negative answers.
        """
        found = [lookup for lookup in lookups.values() if lookup.outcome == "ok"]
        outcomes = [lookup.outcome for lookup in lookups.values()]
        outcome: Outcome
        if found:
            outcome = "ok"
        elif "nxdomain" in outcomes:
            outcome = "nxdomain"
        elif "loop" in outcomes:
            outcome = "loop"
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
        detail = next(
            (lookup.detail for lookup in lookups.values() if lookup.outcome == outcome), ""
        )
        return cls(name, tuple(addresses), ttl, outcome, dict(lookups), detail)

    def lookup(self, record_type: str) -> Lookup:
        """The result for "A" or "AAAA"; derived from the whole answer if not kept apart."""
        found = self.lookups.get(record_type)
        if found is not None:
            return found
        want_v6 = record_type == "AAAA"
        mine = tuple(a for a in self.addresses if (":" in a) == want_v6)
        if self.outcome == "ok" and not mine:
            return Lookup("nodata", (), self.ttl)
        return Lookup(self.outcome, mine, self.ttl, self.detail)

    def reason(self) -> str:
        """A one-line account of a failed answer, for logs and rejections."""
        return self.detail or f"{self.outcome} for {self.name}"
