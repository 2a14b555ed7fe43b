"""Fail closed, lose nothing: what each source contributes when it fails or shrinks.

- A failing source keeps its last known good entries. A client group's expire
  after its `max_stale`, and the group then admits nobody; a destination's never
  expire, since dropping a destination address would stop gating traffic to it.
- A source that never answered (no record on disk: first start, state lost, a new
  config) was never fetched, and nothing here pretends it was:
  a client group adopts the entries the kernel holds for it (what is enforced stays
  enforced), recorded with origin KERNEL at the time of adoption, so they expire
  `max_stale` after the adoption, also across restarts; a destination source serves
  its spec's fallback (a preset's packaged snapshot), or nothing.
- A refresh that shrinks a list by more than its `max_shrink` is held back: the
  previous entries stay enforced until the next refresh agrees (returns the same
  shrunk list) or an admin runs `repogate sync --accept-shrink`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from repogate.addresses import NormalisedEntries
from repogate.config import Config
from repogate.model import KernelTable
from repogate.plan import enforced_entries
from repogate.sources import SourceResult, SourceSpec, specs
from repogate.state import Hold, Record, StateStore

EMPTY = NormalisedEntries(frozenset(), frozenset(), frozenset(), frozenset())


# Staleness.origin: what a source without a result this round is served from.
LAST_GOOD = "last good"  # its last successful fetch
KERNEL = "kernel"  # never fetched: the kernel's entries, adopted (also Record.origin)
NOTHING = "nothing"  # never fetched, and nothing to stand in
# A preset's snapshot is "snapshot <date>" (config.presets.Snapshot.origin).


@dataclass(frozen=True)
class Staleness:
    """A source served without a result this round: from what, since when, until when, why.

    `since` is when the served entries were fetched (LAST_GOOD), adopted (KERNEL, NOTHING)
    or published (a snapshot); only LAST_GOOD is a fetch. Print it with `describe`.
    """

    since: float
    expires_at: float | None  # None: never (destinations)
    expired: bool
    reason: str  # the failure, or "not fetched yet"
    origin: str = LAST_GOOD
    failed: bool = True  # False: not asked yet (the daemon's first moments, status)

    @property
    def never_fetched(self) -> bool:
        return self.origin != LAST_GOOD

    def describe(self, when: Callable[[float], str]) -> str:
        """What is served, in words true for every origin; `when` formats a timestamp."""
        if self.origin == NOTHING:
            return "serving no entries: never fetched"
        if self.origin == LAST_GOOD:
            what = f"its last known good entries, fetched {when(self.since)}"
        elif self.origin == KERNEL:
            what = f"the entries the kernel enforced, adopted {when(self.since)} (never fetched)"
        else:
            what = f"the {self.origin} shipped with repogate (never fetched)"
        if self.expires_at is None:
            return f"serving {what}"
        if self.expired:
            return f"{what} EXPIRED at {when(self.expires_at)}: the group admits nobody"
        return f"serving {what} until {when(self.expires_at)}"


@dataclass(frozen=True)
class ShrinkHold:
    """A refresh held back because it shrank too much."""

    previous: int
    proposed: int
    since: float


@dataclass(frozen=True)
class Resolved:
    groups: dict[str, NormalisedEntries]
    destinations: dict[str, NormalisedEntries]  # dynamic entries only, per destination
    # By source key: every source without a result this round, and what it is served
    # from instead.
    fallbacks: dict[str, Staleness] = field(default_factory=dict)
    held: dict[str, ShrinkHold] = field(default_factory=dict)  # by source key

    @property
    def stale(self) -> dict[str, Staleness]:
        """The fallbacks that failed or expired (what `repogate_source_stale` reports)."""
        return {key: info for key, info in self.fallbacks.items() if info.failed or info.expired}


def digest(entries: NormalisedEntries) -> str:
    hasher = hashlib.sha256()
    for part in (
        entries.addresses_v4,
        entries.addresses_v6,
        entries.networks_v4,
        entries.networks_v6,
    ):
        hasher.update("\n".join(sorted(part)).encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


def shrank_too_much(previous: int, proposed: int, max_shrink: float) -> bool:
    return previous > 0 and proposed < previous * (1 - max_shrink)


def resolve(
    config: Config,
    *,
    results: Mapping[str, SourceResult],
    failures: Mapping[str, str],
    store: StateStore | None,
    current: KernelTable | None,
    now: float,
    accept_shrink: bool = False,
    source_specs: Sequence[SourceSpec] | None = None,
) -> Resolved:
    """Entries per group and per destination, recording successes in the store."""
    groups: dict[str, NormalisedEntries] = {}
    destinations: dict[str, NormalisedEntries] = {}
    fallbacks: dict[str, Staleness] = {}
    held: dict[str, ShrinkHold] = {}
    all_specs = list(source_specs) if source_specs is not None else specs(config)
    for spec in all_specs:
        result = results.get(spec.key)
        if result is not None:
            entries = _accept(
                spec, result=result, store=store, now=now, accept_shrink=accept_shrink, held=held
            )
        else:
            entries = _without_result(
                spec, store=store, current=current, now=now, failures=failures, into=fallbacks
            )
        if spec.group is not None:
            groups[spec.group] = entries
        elif spec.destination is not None:
            destinations[spec.destination] = union(destinations.get(spec.destination), entries)
    if store is not None:
        store.retain({spec.key for spec in all_specs if spec.dynamic})
    return Resolved(groups, destinations, fallbacks, held)


def _accept(
    spec: SourceSpec,
    *,
    result: SourceResult,
    store: StateStore | None,
    now: float,
    accept_shrink: bool,
    held: dict[str, ShrinkHold],
) -> NormalisedEntries:
    if not spec.dynamic or store is None:
        return result.entries
    previous = store.get(spec.key, spec.fingerprint)
    if previous is not None and spec.max_shrink is not None and not accept_shrink:
        before, after = len(previous.entries), len(result.entries)
        if shrank_too_much(before, after, spec.max_shrink):
            proposed = digest(result.entries)
            hold = store.holds.get(spec.key)
            # A reconcile for another reason reuses the same result: only a later
            # fetch returning the same list is a refresh that agrees.
            agreed = hold is not None and hold.digest == proposed and result.fetched_at > hold.seen
            if not agreed:
                since = hold.since if hold is not None else now
                seen = max(result.fetched_at, hold.seen if hold is not None else 0.0)
                store.hold(spec.key, Hold(proposed, after, since, seen))
                held[spec.key] = ShrinkHold(before, after, since)
                return previous.entries
    store.put(spec.key, Record(spec.fingerprint, now, result.origin, result.entries))
    store.release(spec.key)
    return result.entries


def _without_result(
    spec: SourceSpec,
    *,
    store: StateStore | None,
    current: KernelTable | None,
    now: float,
    failures: Mapping[str, str],
    into: dict[str, Staleness],
) -> NormalisedEntries:
    """Last known good, else (never fetched) the kernel's entries, a fallback, or nothing."""
    failed = spec.key in failures
    reason = failures.get(spec.key, "not fetched yet")
    record = store.get(spec.key, spec.fingerprint) if store is not None else None
    if record is not None and record.origin == KERNEL and spec.group is None:
        record = None  # written by older versions for destinations: empty, never fetched
    if record is None and spec.group is not None:
        record = Record(spec.fingerprint, now, KERNEL, enforced_entries(current, spec.group))
        if store is not None and spec.dynamic:
            store.put(spec.key, record)  # so max_stale counts from the adoption
    if record is None:
        fallback = spec.fallback
        if fallback is None:
            into[spec.key] = Staleness(now, None, False, reason, NOTHING, failed)
            return EMPTY
        published = fallback.taken.timestamp()
        into[spec.key] = Staleness(published, None, False, reason, fallback.origin, failed)
        return fallback.entries
    origin = KERNEL if record.origin == KERNEL else LAST_GOOD
    if spec.max_stale is None:
        into[spec.key] = Staleness(record.fetched_at, None, False, reason, origin, failed)
        return record.entries
    expires_at = record.fetched_at + spec.max_stale
    expired = now >= expires_at
    into[spec.key] = Staleness(record.fetched_at, expires_at, expired, reason, origin, failed)
    return EMPTY if expired else record.entries


def last_fetched(store: StateStore | None) -> dict[str, float]:
    """When each source last answered (source key -> time); adoptions are not fetches."""
    records = store.records if store is not None else {}
    return {key: rec.fetched_at for key, rec in records.items() if rec.origin != KERNEL}


def union(left: NormalisedEntries | None, right: NormalisedEntries) -> NormalisedEntries:
    if left is None:
        return right
    return NormalisedEntries(
        left.addresses_v4 | right.addresses_v4,
        left.addresses_v6 | right.addresses_v6,
        left.networks_v4 | right.networks_v4,
        left.networks_v6 | right.networks_v6,
    )
