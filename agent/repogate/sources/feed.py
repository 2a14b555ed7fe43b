"""A vendor's published IP-range feed (Atlassian's `ip-ranges.atlassian.com` JSON).

The document lists every range of every Atlassian product:

    {"creationDate": "...", "syncToken": 1712345678,
     "items": [{"network": "104.192.136.0", "mask_len": 21, "cidr": "104.192.136.0/21",
                "mask": "255.255.248.0", "region": ["us-east-1"],
                "product": ["bitbucket"], "direction": ["ingress", "egress"]}, ...]}

An item is kept when its `product` list names any configured product and its `direction`
list any configured direction (`ingress`: where clients connect to). Regions are not
filtered, as Atlassian advises: Bitbucket may serve a client from any region.

A malformed item that might have been wanted is rejected and counted, never fatal, exactly
like a bad line in a client list. A document that is not JSON, has no `items`, or yields
no range at all is a SourceError instead: an empty result means the format or the filter
changed, and the destination must keep its last known good ranges rather than lose them.
Ranges broader than the destination limit (/8, /16 for IPv6) are rejected too: one
`0.0.0.0/0` in a feed would put every HTTPS site behind the gate.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from repogate.addresses import ParsedList, Rejected, parse_many
from repogate.config import DESTINATION_PREFIX_LIMITS
from repogate.config.schema import FeedConfig
from repogate.errors import SourceError
from repogate.sources import SourceResult
from repogate.sources.http import (
    ConditionalFetch,
    ConditionalSource,
    Fetcher,
    HttpResponse,
    fetch_url,
)

REJECTED_SAMPLE = 10


@dataclass(frozen=True)
class ParsedFeed:
    """The selected ranges of one feed document, and what the document said about itself."""

    parsed: ParsedList
    items: int  # items in the document
    matched: int  # items whose product and direction matched (bad CIDRs included)
    creation_date: str | None
    sync_token: str | None


def parse_feed(
    text: str,
    products: Sequence[str],
    directions: Sequence[str],
    prefix_limits: Mapping[int, int] = DESTINATION_PREFIX_LIMITS,
) -> ParsedFeed:
    """Select the CIDRs of matching items; malformed candidates are rejected and counted."""
    try:
        document: Any = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"the feed is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise SourceError("the feed has no 'items' list")
    items: list[Any] = document["items"]
    wanted_products = {product.casefold() for product in products}
    wanted_directions = {direction.casefold() for direction in directions}
    cidrs: list[object] = []
    indexes: list[int] = []  # cidrs[i] came from items[indexes[i]]
    rejected: list[Rejected] = []
    rejected_count = 0
    matched = 0
    for index, item in enumerate(items):
        verdict, problem = _check_item(item, wanted_products, wanted_directions)
        if verdict == "other":
            continue
        if verdict == "match":
            matched += 1
        if problem is not None:
            rejected_count += 1
            if len(rejected) < REJECTED_SAMPLE:
                rejected.append(Rejected(f"$.items[{index}]", _short(item), problem))
            continue
        cidrs.append(item["cidr"])
        indexes.append(index)
    if matched == 0:
        unreadable = f" ({rejected_count} unreadable)" if rejected_count else ""
        raise SourceError(
            f"no item of the feed's {len(items)}{unreadable} matches products "
            f"{', '.join(products)} and directions {', '.join(directions)}"
        )
    parsed = parse_many(cidrs, lambda i: f"$.items[{indexes[i]}].cidr", prefix_limits)
    merged = ParsedList(
        entries=parsed.entries,
        accepted=parsed.accepted,
        rejected_count=rejected_count + parsed.rejected_count,
        rejected_sample=(*rejected, *parsed.rejected_sample)[:REJECTED_SAMPLE],
    )
    if merged.accepted == 0:
        first = merged.rejected_sample[0] if merged.rejected_sample else None
        raise SourceError(f"all {matched} matching items were rejected (first: {first})")
    return ParsedFeed(
        parsed=merged,
        items=len(items),
        matched=matched,
        creation_date=_text(document.get("creationDate")),
        sync_token=_text(document.get("syncToken")),
    )


def _check_item(
    item: object, products: set[str], directions: set[str]
) -> tuple[Literal["match", "other", "unreadable"], str | None]:
    """Whether the item is one we want, and what is wrong with it if it may be.

    An item whose filter fields cannot be read is "unreadable" and rejected, so it is
    counted: silently skipping it would hide a format change.
    """
    if not isinstance(item, dict):
        return "unreadable", "not an object"
    item_products = _names(item.get("product"))
    item_directions = _names(item.get("direction"))
    if item_products is None:
        return "unreadable", "'product' is not a list of strings"
    if not products & item_products:
        return "other", None  # another product's item: whatever else is wrong is not ours
    if item_directions is None:
        return "unreadable", "'direction' is not a list of strings"
    if not directions & item_directions:
        return "other", None
    return "match", None if "cidr" in item else "no 'cidr'"


def _names(value: object) -> set[str] | None:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        return None
    return {name.casefold() for name in value}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _short(item: object) -> str:
    text = json.dumps(item, sort_keys=True) if isinstance(item, dict | list) else repr(item)
    return text if len(text) <= 120 else text[:117] + "..."


class FeedSource(ConditionalSource):
    """A destination's ranges from a published feed, fetched conditionally every interval."""

    def __init__(
        self,
        feed: FeedConfig,
        *,
        name: str | None = None,
        prefix_limits: Mapping[int, int] = DESTINATION_PREFIX_LIMITS,
        fetch: Fetcher = fetch_url,
    ) -> None:
        host = urllib.parse.urlsplit(feed.http.url).hostname or feed.http.url
        self.name = name or f"feed {host}"
        self._feed = feed
        self._limits = prefix_limits
        self._fetch = ConditionalFetch(feed.http, self._parse, fetch)
        self.last_feed: ParsedFeed | None = None

    def _parse(self, response: HttpResponse) -> SourceResult:
        url = self._feed.http.url
        try:
            feed = parse_feed(
                response.text, self._feed.products, self._feed.directions, self._limits
            )
        except SourceError as exc:
            raise SourceError(f"{url}: {exc}") from exc
        self.last_feed = feed
        parsed = feed.parsed
        return SourceResult(
            entries=parsed.entries,
            accepted=parsed.accepted,
            rejected_count=parsed.rejected_count,
            rejected_sample=parsed.rejected_sample,
            origin=url,
            refresh_in=self._feed.interval,
        )
