"""Static client groups: the entries were checked with the config, so this cannot fail."""

from __future__ import annotations

from repogate.addresses import normalise
from repogate.config import StaticClients
from repogate.sources import SourceResult


class StaticSource:
    def __init__(self, group: StaticClients) -> None:
        self.name = group.name
        self._group = group

    def signature(self) -> object | None:
        return None  # static entries change only with the config

    def fetch(self) -> SourceResult:
        entries = normalise(self._group.entries)
        return SourceResult(entries, accepted=len(self._group.entries), origin="config")
