"""The Atlassian IP-range feed: filtering by product and direction, parsing, conditional fetches.

No server here: the document is parsed directly, and FeedSource gets a fake fetcher. The
HTTPS path is tested in tests/integration/test_http.py, with this module's SAMPLE_FEED.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from repogate.addresses import NormalisedEntries
from repogate.config.schema import FeedConfig, HttpOptions
from repogate.errors import SourceError
from repogate.sources.feed import FeedSource, parse_feed
from repogate.sources.http import HttpResponse


def _item(
    cidr: str, product: list[str], direction: list[str], region: str = "global"
) -> dict[str, Any]:
    """An item as ip-ranges.atlassian.com publishes it (network, mask and mask_len too)."""
    network, _, length = cidr.partition("/")
    return {
        "network": network,
        "mask_len": int(length),
        "cidr": cidr,
        "mask": "",
        "region": [region],
        "product": product,
        "direction": direction,
    }


BB = ["bitbucket"]
IN, OUT, BOTH = ["ingress"], ["egress"], ["ingress", "egress"]

# Shaped like https://ip-ranges.atlassian.com/ (ranges partly real, partly invented):
# several products, both directions, IPv4 and IPv6, duplicates across regions, /32 and /128
# items, adjacent networks, and malformed items both inside and outside the filter.
SAMPLE_FEED: dict[str, Any] = {
    "creationDate": "2026-11-20T04:12:37.108148",
    "syncToken": 1763611957,
    "items": [
        _item("104.192.136.0/21", BB, BOTH, "us-east-1"),  # 0
        _item("104.192.136.0/21", BB, BOTH, "us-west-2"),  # 1: same range, other region
        _item("185.166.140.0/22", BB, BOTH, "eu-west-1"),  # 2
        _item("13.200.41.128/25", BB, IN, "ap-south-1"),  # 3
        _item("18.184.99.128/25", BB, IN, "eu-central-1"),  # 4: adjacent to 5
        _item("18.184.99.0/25", BB, IN, "eu-central-1"),  # 5
        _item("2401:1d80:1010::/48", BB, IN),  # 6
        _item("2401:1d80:1003::/48", BB, BOTH, "us-east-1"),  # 7
        _item("3.25.26.36/32", BB, IN, "ap-southeast-2"),  # 8: a single address
        _item("2600:1f18:2146:e305:ddd1:3fd6:b4c6:3ee5/128", BB, IN, "us-east-1"),  # 9
        _item("34.199.54.113/32", BB, OUT, "us-east-1"),  # 10: webhook egress
        _item("52.202.195.162/32", BB, OUT, "us-east-1"),  # 11
        _item("2600:1f18:2146:e300::/56", BB, OUT, "us-east-1"),  # 12
        _item("13.52.5.96/28", ["jira", "confluence", "bitbucket"], IN, "us-west-1"),  # 13
        _item("13.52.5.0/25", ["jira", "confluence"], BOTH, "us-west-1"),  # 14
        _item("18.205.93.0/25", ["jira"], OUT, "us-east-1"),  # 15
        _item("2600:1f18:2146:e303::/64", ["jira"], IN, "us-east-1"),  # 16
        _item("13.236.8.128/25", ["confluence"], IN, "ap-southeast-2"),  # 17
        _item("2406:da1c:1e0:a200::/56", ["confluence"], BOTH, "ap-southeast-2"),  # 18
        _item("18.246.31.128/25", ["trello"], IN, "us-west-2"),  # 19
        _item("52.215.192.128/25", ["statuspage"], OUT, "eu-west-1"),  # 20
        _item("3.214.51.0/27", ["opsgenie"], IN, "us-east-1"),  # 21
        _item("2401:1d80:3000::/36", ["atlassian"], BOTH),  # 22
        # Malformed, and wanted by bitbucket/ingress: rejected and counted.
        _item("104.192.143.0/33", BB, IN),  # 23: no such prefix length
        _item("185.166.143.7/22", BB, IN),  # 24: host bits set
        {k: v for k, v in _item("18.234.32.0/26", BB, IN).items() if k != "cidr"},  # 25
        "104.192.136.0/21",  # 26: not an object
        _item("0.0.0.0/0", BB, IN),  # 27: would gate every HTTPS site
        {**_item("18.234.32.64/26", BB, IN), "product": "bitbucket"},  # 28: not a list
        {k: v for k, v in _item("18.234.32.128/26", BB, IN).items() if k != "direction"},  # 29
        {**_item("18.234.32.192/26", BB, IN), "cidr": 316540096},  # 30: not a string
        # Malformed but another product's or direction's: not ours, silently skipped.
        {**_item("13.52.6.0/25", ["jira"], IN), "cidr": "garbage"},  # 31
        {**_item("13.236.9.0/25", ["confluence"], IN), "direction": "ingress"},  # 32
        {**_item("34.232.25.90/32", BB, OUT), "cidr": "nonsense"},  # 33
        _item("2401:1d80:3200::/40", ["jira"], IN),  # 34
        _item("2406:DA18:809:E04::/64", BB, IN, "ap-southeast-1"),  # 35: upper case
        _item("13.237.4.0/24", ["confluence", "jira"], BOTH, "ap-southeast-2"),  # 36
        _item("44.199.3.254/32", BB, OUT, "us-east-1"),  # 37
    ],
}
SAMPLE_TEXT = json.dumps(SAMPLE_FEED, indent=2)

BITBUCKET_INGRESS = NormalisedEntries(
    addresses_v4=frozenset({"3.25.26.36"}),
    addresses_v6=frozenset({"2600:1f18:2146:e305:ddd1:3fd6:b4c6:3ee5"}),
    networks_v4=frozenset(
        {
            "104.192.136.0/21",
            "185.166.140.0/22",
            "13.200.41.128/25",
            "18.184.99.0/24",  # items 4 and 5, collapsed
            "13.52.5.96/28",
        }
    ),
    networks_v6=frozenset({"2401:1d80:1010::/48", "2401:1d80:1003::/48", "2406:da18:809:e04::/64"}),
)
BITBUCKET_INGRESS_ACCEPTED = 12  # items 0-9, 13 and 35
BITBUCKET_INGRESS_REJECTED = ["23", "24", "25", "26", "27", "28", "29", "30"]
URL = "https://ip-ranges.atlassian.com/"


def feed_config(
    products: tuple[str, ...] = ("bitbucket",), directions: tuple[str, ...] = ("ingress",)
) -> FeedConfig:
    return FeedConfig(HttpOptions(URL), products, directions, interval=21600.0)


# --- parse_feed ---


def test_bitbucket_ingress_is_selected_from_every_region() -> None:
    feed = parse_feed(SAMPLE_TEXT, ("bitbucket",), ("ingress",))
    assert feed.parsed.entries == BITBUCKET_INGRESS
    assert feed.parsed.accepted == BITBUCKET_INGRESS_ACCEPTED
    assert feed.items == len(SAMPLE_FEED["items"])
    assert feed.matched == BITBUCKET_INGRESS_ACCEPTED + 5  # and 5 bad CIDRs; 3 unreadable
    assert (feed.creation_date, feed.sync_token) == ("2026-11-20T04:12:37.108148", "1763611957")


def test_malformed_candidates_are_rejected_counted_and_located() -> None:
    feed = parse_feed(SAMPLE_TEXT, ("bitbucket",), ("ingress",))
    assert feed.parsed.rejected_count == len(BITBUCKET_INGRESS_REJECTED)
    reasons = {
        rejected.where.partition("[")[2].partition("]")[0]: rejected.reason
        for rejected in feed.parsed.rejected_sample
    }
    assert sorted(reasons, key=int) == BITBUCKET_INGRESS_REJECTED
    assert reasons["23"] == "'104.192.143.0/33' is not an IP address or network"
    assert "host bits set (did you mean '185.166.140.0/22'?)" in reasons["24"]
    assert reasons["25"] == "no 'cidr'"
    assert reasons["26"] == "not an object"
    assert reasons["27"] == "'0.0.0.0/0' is broader than /8"
    assert reasons["28"] == "'product' is not a list of strings"
    assert reasons["29"] == "'direction' is not a list of strings"
    assert reasons["30"] == "316540096 is not a string"
    wheres = {rejected.where for rejected in feed.parsed.rejected_sample}
    assert "$.items[23].cidr" in wheres  # a bad cidr is located at its field
    assert "$.items[25]" in wheres  # a bad item at the item


def test_egress_selects_the_webhook_ranges() -> None:
    feed = parse_feed(SAMPLE_TEXT, ("bitbucket",), ("egress",))
    assert feed.parsed.entries == NormalisedEntries(
        addresses_v4=frozenset({"34.199.54.113", "52.202.195.162", "44.199.3.254"}),
        addresses_v6=frozenset(),
        networks_v4=frozenset({"104.192.136.0/21", "185.166.140.0/22"}),
        networks_v6=frozenset({"2401:1d80:1003::/48", "2600:1f18:2146:e300::/56"}),
    )
    # Items 26, 28 and 29 cannot be told apart from wanted ones; 33 is bitbucket egress.
    assert feed.parsed.rejected_count == 4


def test_any_of_several_products_and_directions_matches() -> None:
    feed = parse_feed(SAMPLE_TEXT, ("jira", "confluence"), ("ingress", "egress"))
    assert feed.parsed.entries.networks_v4 == {
        "13.52.5.0/25",  # item 13's 13.52.5.96/28 lies inside it
        "18.205.93.0/25",
        "13.236.8.128/25",
        "13.237.4.0/24",
    }
    assert feed.parsed.entries.networks_v6 == {
        "2600:1f18:2146:e303::/64",
        "2406:da1c:1e0:a200::/56",
        "2401:1d80:3200::/40",
    }
    rejected = sorted(r.where for r in feed.parsed.rejected_sample)
    assert rejected == ["$.items[26]", "$.items[28]", "$.items[31].cidr", "$.items[32]"]


def test_matching_ignores_case() -> None:
    document = {"items": [_item("104.192.136.0/21", ["BitBucket"], ["Ingress"])]}
    feed = parse_feed(json.dumps(document), ("bitbucket",), ("ingress",))
    assert feed.parsed.entries.networks_v4 == {"104.192.136.0/21"}


def test_the_destination_prefix_limit_applies() -> None:
    document = {"items": [_item("10.0.0.0/8", BB, IN), _item("2000::/15", BB, IN)]}
    feed = parse_feed(json.dumps(document), ("bitbucket",), ("ingress",))
    assert feed.parsed.entries.networks_v4 == {"10.0.0.0/8"}
    assert [rejected.reason for rejected in feed.parsed.rejected_sample] == [
        "'2000::/15' is broader than /16"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html>Service Unavailable</html>", "the feed is not valid JSON: "),
        ("[]", "the feed has no 'items' list"),
        ('{"syncToken": 1}', "the feed has no 'items' list"),
        ('{"items": {"cidr": "104.192.136.0/21"}}', "the feed has no 'items' list"),
        ('{"items": []}', "no item of the feed's 0 matches products bitbucket"),
    ],
)
def test_an_unusable_document_is_a_source_error(text: str, message: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_feed(text, ("bitbucket",), ("ingress",))
    assert str(caught.value).startswith(message)


def test_a_filter_matching_nothing_is_a_source_error() -> None:
    with pytest.raises(
        SourceError, match=r"no item of the feed's 38 \(2 unreadable\) matches products bitbuckt"
    ):
        parse_feed(SAMPLE_TEXT, ("bitbuckt",), ("ingress",))


def test_only_rejected_matches_is_a_source_error() -> None:
    document = {"items": [_item("104.192.136.0/33", BB, IN), _item("0.0.0.0/0", BB, IN)]}
    with pytest.raises(SourceError, match=r"all 2 matching items were rejected \(first: "):
        parse_feed(json.dumps(document), ("bitbucket",), ("ingress",))


# --- FeedSource, with a fake fetcher ---


@dataclass
class FakeFetch:
    """Answers from a script (HttpResponse, None for 304, or an error) and records calls."""

    script: list[HttpResponse | SourceError | None]
    calls: list[tuple[str | None, str | None]] = field(default_factory=list)

    def __call__(
        self, options: HttpOptions, *, etag: str | None, last_modified: str | None
    ) -> HttpResponse | None:
        assert options.url == URL
        self.calls.append((etag, last_modified))
        answer = self.script.pop(0)
        if isinstance(answer, SourceError):
            raise answer
        return answer


def response(text: str = SAMPLE_TEXT, etag: str | None = '"v1"') -> HttpResponse:
    last_modified = "Thu, 20 Nov 2026 04:12:37 GMT"
    return HttpResponse(URL, text, len(text), etag=etag, last_modified=last_modified)


def test_feed_source_returns_a_source_result() -> None:
    source = FeedSource(feed_config(), fetch=FakeFetch([response()]))
    result = source.fetch()
    assert result.entries == BITBUCKET_INGRESS
    assert result.accepted == BITBUCKET_INGRESS_ACCEPTED
    assert result.rejected_count == len(BITBUCKET_INGRESS_REJECTED)
    assert result.origin == URL
    assert result.refresh_in == 21600.0
    assert source.name == "feed ip-ranges.atlassian.com"
    assert source.signature() is None
    assert source.last_status == 200
    assert source.last_feed is not None and source.last_feed.sync_token == "1763611957"


def test_not_modified_returns_the_same_result() -> None:
    fake = FakeFetch([response(), None])
    source = FeedSource(feed_config(), name="bitbucket", fetch=fake)
    first = source.fetch()
    assert source.fetch() is first
    assert fake.calls == [(None, None), ('"v1"', "Thu, 20 Nov 2026 04:12:37 GMT")]
    assert source.last_status == 304
    assert source.name == "bitbucket"


def test_a_new_document_replaces_the_old() -> None:
    changed = copy.deepcopy(SAMPLE_FEED)
    changed["items"] = [_item("104.192.136.0/21", BB, IN)]
    fake = FakeFetch([response(), response(json.dumps(changed), '"v2"'), None])
    source = FeedSource(feed_config(), fetch=fake)
    source.fetch()
    second = source.fetch()
    assert second.entries.networks_v4 == {"104.192.136.0/21"}
    assert source.fetch() is second
    assert fake.calls[2][0] == '"v2"'


def test_a_failed_fetch_is_remembered_and_raised() -> None:
    error = SourceError(f"{URL}: HTTP 503 Service Unavailable")
    source = FeedSource(feed_config(), fetch=FakeFetch([error]))
    with pytest.raises(SourceError, match="HTTP 503"):
        source.fetch()
    assert source.last_status == f"{URL}: HTTP 503 Service Unavailable"
    assert source.last_outcome is not None and source.last_outcome.status is None


def test_a_body_that_fails_to_parse_is_fetched_in_full_next_time() -> None:
    """Its validators are not kept, so a 304 can never excuse a broken document."""
    fake = FakeFetch([response(), response("not json", '"v2"'), response(etag='"v3"')])
    source = FeedSource(feed_config(), fetch=fake)
    source.fetch()
    with pytest.raises(SourceError) as caught:
        source.fetch()
    assert str(caught.value).startswith(f"{URL}: the feed is not valid JSON")
    source.fetch()
    assert [etag for etag, _ in fake.calls] == [None, '"v1"', '"v1"']
