"""Client sources: each turns one client group's config into normalised entries.

Every source type sits behind the same small Protocol, so the planner never
knows where entries came from. A source that fails raises SourceError; the
caller then keeps what the kernel enforces for that group (fail closed, lose nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from repogate.addresses import NormalisedEntries, Rejected
from repogate.config import ClientGroup, Config, FileClients, StaticClients
from repogate.errors import SourceError


@dataclass(frozen=True)
class SourceResult:
    entries: NormalisedEntries
    accepted: int
    rejected_count: int = 0
    rejected_sample: tuple[Rejected, ...] = ()
    origin: str = ""
    # Seconds until the source wants asking again (a DNS TTL); None: its fixed interval.
    refresh_in: float | None = None


class Source(Protocol):
    name: str

    def fetch(self) -> SourceResult:
        """Read the source now; raise SourceError if it cannot be used at all."""
        ...

    def signature(self) -> object | None:
        """A cheap token that changes when the source may have changed; None: always fetch."""
        ...


@dataclass(frozen=True)
class Collected:
    """What every source returned, and which failed (group name -> reason)."""

    results: Mapping[str, SourceResult]
    failures: Mapping[str, str] = field(default_factory=dict)


def source_for(group: ClientGroup, config: Config) -> Source:
    from repogate.sources.file import FileSource  # noqa: PLC0415 - keep imports one-way
    from repogate.sources.static import StaticSource  # noqa: PLC0415

    if isinstance(group, StaticClients):
        return StaticSource(group)
    if isinstance(group, FileClients):
        return FileSource(group, config.agent.prefix_limits)
    raise TypeError(f"no source for {group!r}")  # unreachable: config checks types


def collect(config: Config) -> Collected:
    results: dict[str, SourceResult] = {}
    failures: dict[str, str] = {}
    for group in config.clients:
        try:
            results[group.name] = source_for(group, config).fetch()
        except SourceError as exc:
            failures[group.name] = str(exc)
    return Collected(results, failures)
