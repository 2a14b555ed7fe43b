"""The Bitbucket preset: DNS answers and Atlassian's feed are unioned into the destination,
and the packaged snapshot of the feed gates it until the feed first answers."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from repogate.addresses import NormalisedEntries
from repogate.config import load_config, parse_config
from repogate.config.presets import PRESETS, SnapshotError, load_snapshot, parse_snapshot
from repogate.lastgood import EMPTY, KERNEL, LAST_GOOD, NOTHING, resolve, union
from repogate.plan import desired_state
from repogate.sources import SourceResult, specs
from repogate.state import Record, StateStore
from tests.unit.conftest import REPO, SHIPPED_CONFIG

NOW = 1_800_000_000.0


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


# --- the packaged snapshot: gating before the feed and DNS ever answer ---

SNAPSHOT_FILE = REPO / "agent" / "repogate" / "config" / "bitbucket-ranges.txt"
FEED = "destination:bitbucket:feed"
HOSTS = "destination:bitbucket:hosts"


def test_the_snapshot_is_dated_and_names_its_source() -> None:
    header = [line for line in SNAPSHOT_FILE.read_text().splitlines() if line.startswith("#")]
    assert "# feed creationDate: 2026-10-09T00:06:06.601554" in header
    assert any("https://ip-ranges.atlassian.com/" in line for line in header)
    assert any(line.startswith("# taken from: ") for line in header)
    snapshot = PRESETS["bitbucket"].snapshot
    assert snapshot is not None
    assert snapshot.taken == datetime(2026, 10, 9, 0, 6, 6, 601554, tzinfo=UTC)
    assert snapshot.origin == "snapshot 2026-10-09"


def test_the_snapshot_holds_bitbucket_ingress_ranges_collapsed() -> None:
    snapshot = load_snapshot("bitbucket-ranges.txt")  # through importlib.resources
    assert snapshot == PRESETS["bitbucket"].snapshot
    # The /24s inside the /21 and /22 aggregates collapse into them, as in the nft set.
    assert snapshot.entries.networks_v4 == {
        "104.192.136.0/21",
        "185.166.140.0/22",
        "13.35.248.0/24",
        "13.227.180.0/24",
        "13.227.213.0/24",
        "13.200.41.128/25",
    }
    assert snapshot.entries.networks_v6 == {"2401:1d80:3000::/36"}
    assert not snapshot.entries.addresses_v4 and not snapshot.entries.addresses_v6


def test_the_snapshot_ships_as_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["repogate.config"]
    assert any(fnmatch.fnmatch(SNAPSHOT_FILE.name, pattern) for pattern in patterns)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# feed creationDate: 2026-10-09\n10.0.0.0/8x\n", "snap.txt:2: '10.0.0.0/8x'"),
        ("# feed creationDate: 2026-10-09\n104.192.136.1/21\n", "snap.txt:2: '104.192.136.1/21'"),
        ("104.192.136.0/21\n", "no '# feed creationDate:' line"),
        ("# feed creationDate: yesterday\n104.192.136.0/21\n", "snap.txt:1: 'yesterday'"),
        ("# feed creationDate: 2026-10-09\n# nothing else\n", "snap.txt: no ranges"),
    ],
)
def test_a_broken_snapshot_file_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(SnapshotError, match=re.escape(message)):
        parse_snapshot(text, "snap.txt")


def test_first_start_without_network_gates_with_the_snapshot(tmp_path: Path) -> None:
    config = preset_config(tmp_path)
    store = StateStore(tmp_path)
    resolved = resolve(
        config,  # type: ignore[arg-type]
        results={},
        failures={FEED: "cannot connect", HOSTS: "SERVFAIL"},
        store=store,
        current=None,
        now=NOW,
    )
    desired = desired_state(config, resolved.groups, resolved.destinations)  # type: ignore[arg-type]
    assert "104.192.136.0/21" in desired.sets["dest_bitbucket_v4"].elements
    assert desired.sets["dest_bitbucket_v6"].elements == {"2401:1d80:3000::/36"}
    feed = resolved.stale[FEED]
    assert (feed.origin, feed.never_fetched, feed.expires_at) == ("snapshot 2026-10-09", True, None)
    assert feed.since == datetime(2026, 10, 9, 0, 6, 6, 601554, tzinfo=UTC).timestamp()
    hosts = resolved.stale[HOSTS]
    assert (hosts.origin, hosts.never_fetched) == (NOTHING, True)
    # Nothing was fetched, so nothing is recorded as if it had been.
    assert store.records == {}


def test_the_shipped_config_gates_before_any_source_answers(tmp_path: Path) -> None:
    config = load_config(SHIPPED_CONFIG)
    failures = {spec.key: "no network" for spec in specs(config) if spec.kind in ("hosts", "feed")}
    results = {spec.key: spec.make().fetch() for spec in specs(config) if spec.kind == "static"}
    resolved = resolve(
        config, results=results, failures=failures, store=None, current=None, now=NOW
    )
    desired = desired_state(config, resolved.groups, resolved.destinations)
    for destination in config.destinations:
        assert desired.sets[f"dest_{destination}_v4"].elements, destination


def test_the_feed_answering_replaces_the_snapshot(tmp_path: Path) -> None:
    config = preset_config(tmp_path)
    store = StateStore(tmp_path)
    live = entries(set(), set(), {"104.192.136.0/21"}, set())
    dns = entries({"104.192.141.1"}, {"2406:da00:ff00::1"}, set(), set())
    answered = resolve(
        config,  # type: ignore[arg-type]
        results={
            "office": SourceResult(entries({"10.20.0.1"}, set(), set(), set()), accepted=1),
            FEED: SourceResult(live, accepted=1),
            HOSTS: SourceResult(dns, accepted=2),
        },
        failures={},
        store=store,
        current=None,
        now=NOW,
    )
    assert answered.destinations["bitbucket"] == union(live, dns)
    assert answered.fallbacks == {}
    # Failing later serves the live answer, not the snapshot, and says it was a fetch.
    failing = resolve(
        config,  # type: ignore[arg-type]
        results={},
        failures={FEED: "HTTP 503", HOSTS: "timeout"},
        store=store,
        current=None,
        now=NOW + 3600,
    )
    assert failing.destinations["bitbucket"] == union(live, dns)
    assert failing.stale[FEED].origin == LAST_GOOD
    assert failing.stale[FEED].since == NOW


def test_an_empty_kernel_record_of_older_versions_does_not_hide_the_snapshot(
    tmp_path: Path,
) -> None:
    config = preset_config(tmp_path)
    store = StateStore(tmp_path)
    spec = next(spec for spec in specs(config) if spec.key == FEED)  # type: ignore[arg-type]
    store.put(FEED, Record(spec.fingerprint, NOW - 60, KERNEL, EMPTY))
    resolved = resolve(
        config,  # type: ignore[arg-type]
        results={},
        failures={FEED: "HTTP 503"},
        store=store,
        current=None,
        now=NOW,
    )
    assert resolved.stale[FEED].origin == "snapshot 2026-10-09"
    assert "185.166.140.0/22" in resolved.destinations["bitbucket"].networks_v4
