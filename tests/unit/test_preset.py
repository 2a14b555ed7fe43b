"""The Bitbucket preset: DNS answers and Atlassian's feed are unioned into the destination."""

from __future__ import annotations

from pathlib import Path

from repogate.addresses import NormalisedEntries
from repogate.config import parse_config
from repogate.lastgood import resolve
from repogate.plan import desired_state
from repogate.sources import SourceResult, specs
from repogate.state import StateStore


def preset_config(tmp_path: Path, **bitbucket: object) -> object:
    return parse_config(
        {
            "agent": {"state_dir": str(tmp_path)},
            "destinations": {"bitbucket": {"preset": "bitbucket", **bitbucket}},
            "clients": [{"name": "office", "type": "static", "addresses": ["10.20.0.0/16"]}],
        }
    )


def entries(v4: set[str], v6: set[str], nets4: set[str], nets6: set[str]) -> NormalisedEntries:
    return NormalisedEntries(frozenset(v4), frozenset(v6), frozenset(nets4), frozenset(nets6))


def test_preset_sources_are_dns_and_the_feed(tmp_path: Path) -> None:
    config = preset_config(tmp_path)
    kinds = {spec.key: spec.kind for spec in specs(config)}  # type: ignore[arg-type]
    assert kinds == {
        "office": "static",
        "destination:bitbucket:hosts": "hosts",
        "destination:bitbucket:feed": "feed",
    }


def test_destination_is_the_union_of_dns_feed_and_own_networks(tmp_path: Path) -> None:
    config = preset_config(tmp_path, networks=["203.0.113.0/24"])
    dns = entries({"104.192.141.1", "185.166.143.9"}, {"2401:1d80:1010::150"}, set(), set())
    feed = entries(set(), set(), {"104.192.136.0/21", "185.166.140.0/22"}, set())
    resolved = resolve(
        config,  # type: ignore[arg-type]
        results={
            "office": SourceResult(entries({"10.20.0.1"}, set(), set(), set()), accepted=1),
            "destination:bitbucket:hosts": SourceResult(dns, accepted=3),
            "destination:bitbucket:feed": SourceResult(feed, accepted=2),
        },
        failures={},
        store=StateStore(tmp_path),
        current=None,
        now=0.0,
    )
    desired = desired_state(config, resolved.groups, resolved.destinations)  # type: ignore[arg-type]
    # DNS answers inside a feed range collapse into it (no overlapping intervals).
    assert desired.sets["dest_bitbucket_v4"].elements == {
        "104.192.136.0/21",
        "185.166.140.0/22",
        "203.0.113.0/24",
    }
    # The feed has no IPv6 for Bitbucket: DNS supplies it, which is why both are unioned.
    assert desired.sets["dest_bitbucket_v6"].elements == {"2401:1d80:1010::150"}


def test_a_failing_feed_keeps_its_ranges_forever(tmp_path: Path) -> None:
    config = preset_config(tmp_path)
    store = StateStore(tmp_path)
    feed = entries(set(), set(), {"104.192.136.0/21"}, set())
    resolve(
        config,  # type: ignore[arg-type]
        results={"destination:bitbucket:feed": SourceResult(feed, accepted=1)},
        failures={},
        store=store,
        current=None,
        now=0.0,
    )
    years_later = resolve(
        config,  # type: ignore[arg-type]
        results={},
        failures={"destination:bitbucket:feed": "HTTP 503", "destination:bitbucket:hosts": "x"},
        store=store,
        current=None,
        now=10 * 365 * 86400.0,
    )
    assert years_later.destinations["bitbucket"].networks_v4 == {"104.192.136.0/21"}
    assert years_later.stale["destination:bitbucket:feed"].expires_at is None
