"""HTTP(S) client groups, and the conditional fetching they share with the feed.

A fetch is conditional (If-None-Match, If-Modified-Since) on the last response the caller
accepted: an unchanged list costs one small round trip, and a 304 hands back the same
SourceResult. The GET itself (deadline, redirects, size cap, TLS) is sources.transport's;
the CA store and the token are sources.trust's. Their public names are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from repogate.addresses import parse_many
from repogate.config.schema import HttpClients, HttpOptions
from repogate.errors import SourceError
from repogate.sources import SourceResult
from repogate.sources.formats import parse_json, parse_lines, refuse_if_nothing_valid
from repogate.sources.transport import Fetcher, HttpResponse, fetch_url
from repogate.sources.trust import read_token, tls_context

__all__ = [
    "ConditionalFetch",
    "ConditionalSource",
    "FetchOutcome",
    "Fetcher",
    "HttpResponse",
    "HttpSource",
    "fetch_url",
    "read_token",
    "tls_context",
]

Parsed = TypeVar("Parsed")


@dataclass(frozen=True)
class FetchOutcome:
    """How the last fetch went, for status and metrics."""

    status: int | None  # 200 or 304; None when it failed
    error: str | None
    finished: float  # wall clock (time.time())
    duration: float  # seconds
    size: int  # body bytes (0 for 304 and failures)

    @property
    def label(self) -> int | str:
        """200, 304, or the error text."""
        return self.status if self.status is not None else self.error or "error"


class ConditionalFetch(Generic[Parsed]):
    """Fetch and parse a URL, conditionally on the validators of the last accepted response.

    Validators are kept only once `parse` succeeded: a body that failed to parse is fetched
    again in full next time rather than excused by a 304.
    """

    def __init__(
        self,
        options: HttpOptions,
        parse: Callable[[HttpResponse], Parsed],
        fetch: Fetcher = fetch_url,
    ) -> None:
        self.options = options
        self._parse = parse
        self._fetch = fetch
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._value: Parsed | None = None
        self.last_outcome: FetchOutcome | None = None

    def get(self) -> Parsed:
        started = time.monotonic()
        size = 0
        try:
            response = self._fetch(self.options, etag=self._etag, last_modified=self._last_modified)
            if response is None:
                if self._value is None:  # cannot happen: validators come with a value
                    raise SourceError(f"{self.options.url}: HTTP 304 with nothing cached")
                value = self._value
            else:
                size = response.size
                value = self._parse(response)
                self._etag, self._last_modified = response.etag, response.last_modified
                self._value = value
        except SourceError as exc:
            self._record(None, str(exc), started, 0)
            raise
        self._record(200 if response is not None else 304, None, started, size)
        return value

    def _record(self, status: int | None, error: str | None, started: float, size: int) -> None:
        duration = time.monotonic() - started
        self.last_outcome = FetchOutcome(status, error, time.time(), duration, size)


class ConditionalSource:
    """What HTTP-fetched sources share: conditional fetches and their last outcome."""

    _fetch: ConditionalFetch[SourceResult]

    def signature(self) -> object | None:
        """None: only the server knows whether the list changed (a 304 is the cheap check)."""
        return None

    def fetch(self) -> SourceResult:
        """The list now; on 304 the previous SourceResult itself."""
        return self._fetch.get()

    @property
    def last_outcome(self) -> FetchOutcome | None:
        return self._fetch.last_outcome

    @property
    def last_status(self) -> int | str | None:
        """200, 304, the last error's text, or None before the first fetch."""
        outcome = self._fetch.last_outcome
        return outcome.label if outcome is not None else None


class HttpSource(ConditionalSource):
    """A client group fetched over HTTPS: lines or JSON, bad entries rejected and counted."""

    def __init__(
        self,
        group: HttpClients,
        prefix_limits: Mapping[int, int],
        *,
        fetch: Fetcher = fetch_url,
    ) -> None:
        self.name = group.name
        self._group = group
        self._limits = prefix_limits
        self._fetch = ConditionalFetch(group.http, self._parse, fetch)

    def _parse(self, response: HttpResponse) -> SourceResult:
        url = self._group.http.url
        try:
            if self._group.format == "json":
                raw = parse_json(response.text, self._group.json_path)
            else:
                raw = parse_lines(response.text)
        except SourceError as exc:
            raise SourceError(f"{url}: {exc}") from exc
        parsed = parse_many(raw.items, raw.locate, self._limits, skip_empty=raw.skip_empty)
        first = parsed.rejected_sample[0] if parsed.rejected_sample else ""
        refuse_if_nothing_valid(url, parsed.accepted, parsed.rejected_count, first)
        return SourceResult(
            entries=parsed.entries,
            accepted=parsed.accepted,
            rejected_count=parsed.rejected_count,
            rejected_sample=parsed.rejected_sample,
            origin=url,
        )
