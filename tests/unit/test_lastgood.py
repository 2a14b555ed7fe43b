"""lastgood: what a source without a result is served from, described so it can be true.

A source that never answered must never read as "last good fetch at <start time>": the
kernel's entries a group adopts say they were adopted, a destination with nothing says
so, and neither is recorded as a fetch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repogate.addresses import NormalisedEntries
from repogate.config import Config, parse_config
from repogate.lastgood import (
    EMPTY,
    KERNEL,
    LAST_GOOD,
    NOTHING,
    Staleness,
    last_fetched,
    resolve,
)
from repogate.plan import desired_state
from repogate.sources import SourceResult, specs
from repogate.state import StateStore

ENTRIES = NormalisedEntries(frozenset({"10.1.1.1"}), frozenset(), frozenset(), frozenset())
HOUR = 3600.0


def when(timestamp: float) -> str:
    return f"<{timestamp:g}>"


def config_with(tmp_path: Path, **destination: object) -> Config:
    return parse_config(
        {
            "agent": {"state_dir": str(tmp_path), "max_stale": "1h"},
            "destinations": {"bb": {"ports": [22], **destination}},
            "clients": [{"name": "mdm", "type": "file", "path": str(tmp_path / "mdm.txt")}],
        }
    )


def mdm_fingerprint(tmp_path: Path) -> str:
    return f"file:{tmp_path / 'mdm.txt'}:lines:"


def adopted(tmp_path: Path, kernel_from: Any) -> Any:
    """A kernel that enforces ENTRIES for group mdm."""
    config = config_with(tmp_path, networks=["198.51.100.0/24"])
    ok = SourceResult(ENTRIES, accepted=1)
    enforced = resolve(config, results={"mdm": ok}, failures={}, store=None, current=None, now=0)
    return kernel_from(desired_state(config, enforced.groups))


def test_a_fetched_group_is_described_as_fetched(tmp_path: Path) -> None:
    config = config_with(tmp_path, networks=["198.51.100.0/24"])
    store = StateStore(tmp_path)
    ok = SourceResult(ENTRIES, accepted=1, origin="mdm.txt")
    resolve(config, results={"mdm": ok}, failures={}, store=store, current=None, now=1000.0)
    resolved = resolve(
        config, results={}, failures={"mdm": "gone"}, store=store, current=None, now=2000.0
    )
    info = resolved.stale["mdm"]
    assert (info.origin, info.never_fetched, info.since) == (LAST_GOOD, False, 1000.0)
    assert info.describe(when) == (
        "serving its last known good entries, fetched <1000> until <4600>"
    )
    assert last_fetched(store) == {"mdm": 1000.0}


def test_a_group_never_fetched_adopts_the_kernel_and_says_so(
    tmp_path: Path, kernel_from: Any
) -> None:
    config = config_with(tmp_path, networks=["198.51.100.0/24"])
    store = StateStore(tmp_path)
    current = adopted(tmp_path, kernel_from)
    resolved = resolve(
        config, results={}, failures={"mdm": "x"}, store=store, current=current, now=50.0
    )
    assert resolved.groups["mdm"] == ENTRIES  # fail closed: what the kernel enforces stays
    info = resolved.stale["mdm"]
    assert (info.origin, info.never_fetched, info.since) == (KERNEL, True, 50.0)
    assert info.describe(when) == (
        "serving the entries the kernel enforced, adopted <50> (never fetched) until <3650>"
    )
    assert "last known good" not in info.describe(when)
    # The adoption is recorded (so max_stale counts from it) but is not a fetch.
    record = store.get("mdm", mdm_fingerprint(tmp_path))
    assert record is not None and record.origin == KERNEL
    assert last_fetched(store) == {}


def test_an_adoption_expires_max_stale_after_it_even_across_restarts(
    tmp_path: Path, kernel_from: Any
) -> None:
    config = config_with(tmp_path, networks=["198.51.100.0/24"])
    current = adopted(tmp_path, kernel_from)
    store = StateStore(tmp_path)
    resolve(config, results={}, failures={"mdm": "x"}, store=store, current=current, now=50.0)
    store.save()
    restarted = StateStore(tmp_path)
    restarted.load()
    later = resolve(
        config, results={}, failures={"mdm": "x"}, store=restarted, current=current, now=HOUR
    )
    assert later.groups["mdm"] == ENTRIES and later.stale["mdm"].since == 50.0
    expired = resolve(
        config, results={}, failures={"mdm": "x"}, store=restarted, current=current, now=HOUR + 50
    )
    assert expired.groups["mdm"] == EMPTY
    info = expired.stale["mdm"]
    assert info.expired and info.never_fetched
    assert info.describe(when) == (
        "the entries the kernel enforced, adopted <50> (never fetched) EXPIRED at <3650>: "
        "the group admits nobody"
    )


def test_a_destination_never_fetched_serves_nothing_and_records_nothing(tmp_path: Path) -> None:
    config = config_with(tmp_path, hosts=["git.example.com"])
    store = StateStore(tmp_path)
    key = "destination:bb:hosts"
    resolved = resolve(
        config, results={}, failures={key: "SERVFAIL"}, store=store, current=None, now=500.0
    )
    assert resolved.destinations["bb"] == EMPTY
    info = resolved.stale[key]
    assert (info.origin, info.never_fetched, info.expires_at) == (NOTHING, True, None)
    assert info.describe(when) == "serving no entries: never fetched"
    # Nothing is written that a later status could read as "last good fetch: <now>".
    assert key not in store.records
    assert last_fetched(store) == {}


def test_sources_not_asked_yet_are_fallbacks_but_not_stale(tmp_path: Path) -> None:
    config = config_with(tmp_path, hosts=["git.example.com"])
    store = StateStore(tmp_path)
    resolved = resolve(config, results={}, failures={}, store=store, current=None, now=10.0)
    keys = {spec.key for spec in specs(config)}
    assert set(resolved.fallbacks) == keys
    assert all(not info.failed for info in resolved.fallbacks.values())
    assert all(info.reason == "not fetched yet" for info in resolved.fallbacks.values())
    assert resolved.stale == {}


def test_an_expired_group_is_stale_even_when_not_asked_yet(tmp_path: Path) -> None:
    config = config_with(tmp_path, networks=["198.51.100.0/24"])
    store = StateStore(tmp_path)
    ok = SourceResult(ENTRIES, accepted=1)
    resolve(config, results={"mdm": ok}, failures={}, store=store, current=None, now=0.0)
    resolved = resolve(config, results={}, failures={}, store=store, current=None, now=2 * HOUR)
    assert resolved.stale["mdm"].expired and not resolved.stale["mdm"].failed


def test_a_snapshot_is_described_by_its_date() -> None:
    info = Staleness(1.0, None, False, "HTTP 503", "snapshot 2026-10-09")
    assert info.never_fetched
    assert info.describe(when) == (
        "serving the snapshot 2026-10-09 shipped with repogate (never fetched)"
    )
