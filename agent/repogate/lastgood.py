"""Fail closed, lose nothing: what each source contributes when it fails or shrinks.

- A failing source keeps its last known good entries. A client group's expire
  after its `max_stale`, and the group then admits nobody; a destination's never
  expire, since dropping a destination address would stop gating traffic to it.
  Without a record on disk (first start, or state lost), the entries the kernel
  holds for a group are adopted as last known good from now.
- A refresh that shrinks a list by more than its `max_shrink` is held back: the
  previous entries stay enforced until the next refresh agrees (returns the same
  shrunk list) or an admin runs `repogate sync --accept-shrink`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from repogate.addresses import NormalisedEntries
from repogate.config import Config
from repogate.model import KernelTable
from repogate.plan import enforced_entries
from repogate.sources import SourceResult, SourceSpec, specs
from repogate.state import Hold, Record, StateStore

EMPTY = NormalisedEntries(frozenset(), frozenset(), frozenset(), frozenset())


@dataclass(frozen=True)
class Staleness:
    """A source served from last known good: since when, until when, and why."""

    since: float
    expires_at: float | None  # None: never (destinations)
    expired: bool
    reason: str


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
    stale: dict[str, Staleness] = field(default_factory=dict)  # by source key
    held: dict[str, ShrinkHold] = field(default_factory=dict)  # by source key


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
    stale: dict[str, Staleness] = {}
    held: dict[str, ShrinkHold] = {}
    all_specs = list(source_specs) if source_specs is not None else specs(config)
    for spec in all_specs:
        result = results.get(spec.key)
        if result is not None:
            entries = _accept(
                spec, result=result, store=store, now=now, accept_shrink=accept_shrink, held=held
            )
        else:
            entries = _last_known_good(
                spec, store=store, current=current, now=now, failures=failures, stale=stale
            )
        if spec.group is not None:
            groups[spec.group] = entries
        elif spec.destination is not None:
            destinations[spec.destination] = union(destinations.get(spec.destination), entries)
    if store is not None:
        store.retain({spec.key for spec in all_specs if spec.dynamic})
    return Resolved(groups, destinations, stale, held)


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
            agreed = hold is not None and hold.digest == proposed
            if not agreed:
                since = hold.since if hold is not None else now
                store.hold(spec.key, Hold(proposed, after, since))
                held[spec.key] = ShrinkHold(before, after, since)
                return previous.entries
    store.put(spec.key, Record(spec.fingerprint, now, result.origin, result.entries))
    store.release(spec.key)
    return result.entries


def _last_known_good(
    spec: SourceSpec,
    *,
    store: StateStore | None,
    current: KernelTable | None,
    now: float,
    failures: Mapping[str, str],
    stale: dict[str, Staleness],
) -> NormalisedEntries:
    record = store.get(spec.key, spec.fingerprint) if store is not None else None
    if record is None:
        adopted = enforced_entries(current, spec.group) if spec.group is not None else EMPTY
        record = Record(spec.fingerprint, now, "kernel", adopted)
        if store is not None and spec.dynamic:
            store.put(spec.key, record)
    failed = spec.key in failures  # otherwise: not fetched yet (the daemon's first moments)
    if spec.max_stale is None:
        if failed:
            stale[spec.key] = Staleness(record.fetched_at, None, False, failures[spec.key])
        return record.entries
    expires_at = record.fetched_at + spec.max_stale
    expired = now >= expires_at
    if failed or expired:
        reason = failures.get(spec.key, "not fetched yet")
        stale[spec.key] = Staleness(record.fetched_at, expires_at, expired, reason)
    return EMPTY if expired else record.entries


def union(left: NormalisedEntries | None, right: NormalisedEntries) -> NormalisedEntries:
    if left is None:
        return right
    return NormalisedEntries(
        left.addresses_v4 | right.addresses_v4,
        left.addresses_v6 | right.addresses_v6,
        left.networks_v4 | right.networks_v4,
        left.networks_v6 | right.networks_v6,
    )
