"""DNS sources through time: a fake resolver and a hand-moved clock, no network.

DnsSource (client names) and HostsSource (destination hosts) share TTL scheduling and
differ in what a change or a failure does: clients lose a moved address at once, a
destination keeps it for `linger`; a failing client name keeps its addresses until
`max_stale`, a failing destination host for as long as it fails.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from repogate.config.schema import Destination, DnsClients
from repogate.errors import SourceError
from repogate.sources import SourceResult
from repogate.sources.dns import DUE_SLACK, DnsSource, HostsSource
from repogate.sources.resolver import Answer, Lookup, Outcome

HOUR = 3600.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeResolver:
    """Answers from a table the test edits; records which names each call asked."""

    def __init__(self) -> None:
        self.table: dict[str, Answer] = {}
        self.calls: list[list[str]] = []

    def ok(self, name: str, *addresses: str, ttl: float = 60.0) -> None:
        lookups = {
            kind: Lookup("ok", mine, ttl) if mine else Lookup("nodata")
            for kind, mine in (
                ("A", tuple(a for a in addresses if ":" not in a)),
                ("AAAA", tuple(a for a in addresses if ":" in a)),
            )
        }
        self.table[name] = Answer.combine(name, lookups)

    def set(self, name: str, outcome: Outcome, ttl: float = 0.0, detail: str = "") -> None:
        self.table[name] = Answer(name, (), ttl, outcome, detail=detail)

    def split(self, name: str, a: Lookup, aaaa: Lookup) -> None:
        self.table[name] = Answer.combine(name, {"A": a, "AAAA": aaaa})

    def resolve_many(self, names: Iterable[str]) -> dict[str, Answer]:
        asked = list(names)
        self.calls.append(sorted(asked))
        return {name: self.table.get(name, Answer(name, (), 0.0, "nxdomain")) for name in asked}

    @property
    def last(self) -> list[str]:
        return self.calls[-1]


def group(*names: str, **settings: float) -> DnsClients:
    return DnsClients(
        "laptops",
        names,
        min_refresh=settings.get("min_refresh", 30.0),
        max_refresh=settings.get("max_refresh", HOUR),
        max_addresses=int(settings.get("max_addresses", 8)),
    )


def addresses(result: SourceResult) -> set[str]:
    entries = result.entries
    assert not entries.networks_v4 and not entries.networks_v6
    return set(entries.addresses_v4) | set(entries.addresses_v6)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dns() -> FakeResolver:
    return FakeResolver()


def client_source(
    dns: FakeResolver, clock: Clock, *names: str, max_stale: float = 86400.0, **settings: float
) -> DnsSource:
    return DnsSource(group(*names, **settings), dns, max_stale=max_stale, clock=clock)


# --- the resolver's answer, combined from A and AAAA ---


def test_answer_combines_a_and_aaaa() -> None:
    answer = Answer.combine(
        "x.example",
        {
            "A": Lookup("ok", ("10.0.0.2", "10.0.0.1"), 300),
            "AAAA": Lookup("ok", ("2001:db8::1",), 60),
        },
    )
    assert answer.outcome == "ok"
    assert answer.addresses == ("10.0.0.1", "10.0.0.2", "2001:db8::1")
    assert answer.ttl == 60


@pytest.mark.parametrize(
    ("a", "aaaa", "outcome"),
    [
        ("ok", "timeout", "ok"),
        ("nodata", "nodata", "nodata"),
        ("nxdomain", "nxdomain", "nxdomain"),
        ("nodata", "timeout", "timeout"),  # the AAAA half might have had addresses
        ("servfail", "refused", "servfail"),
        ("timeout", "nxdomain", "nxdomain"),  # NXDOMAIN is about the name, not the type
    ],
)
def test_answer_outcome(a: Outcome, aaaa: Outcome, outcome: Outcome) -> None:
    addresses_a = ("10.0.0.1",) if a == "ok" else ()
    answer = Answer.combine("x", {"A": Lookup(a, addresses_a), "AAAA": Lookup(aaaa)})
    assert answer.outcome == outcome


def test_answer_ttl_is_of_the_records_used() -> None:
    """A long-lived A record is not cut short by a shorter negative AAAA answer."""
    answer = Answer.combine(
        "x", {"A": Lookup("ok", ("10.0.0.1",), 600), "AAAA": Lookup("nodata", (), 5)}
    )
    assert answer.ttl == 600
    negative = Answer.combine(
        "x", {"A": Lookup("nxdomain", (), 30), "AAAA": Lookup("nxdomain", (), 20)}
    )
    assert negative.ttl == 20


# --- client names: scheduling ---


def test_first_fetch_resolves_every_name(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("a.example", "10.0.0.1", "2001:db8::1")
    dns.ok("b.example", "10.0.0.2")
    source = client_source(dns, clock, "a.example", "b.example")
    result = source.fetch()
    assert dns.calls == [["a.example", "b.example"]]
    assert result.entries.addresses_v4 == {"10.0.0.1", "10.0.0.2"}
    assert result.entries.addresses_v6 == {"2001:db8::1"}
    assert result.accepted == 3
    assert result.refresh_in == 60
    assert source.signature() is None
    assert source.last_outcomes == {"ok": 2}


@pytest.mark.parametrize(("ttl", "refresh_in"), [(5, 30), (300, 300), (86400, HOUR)])
def test_ttl_is_clamped_to_min_and_max_refresh(
    dns: FakeResolver, clock: Clock, ttl: float, refresh_in: float
) -> None:
    dns.ok("a.example", "10.0.0.1", ttl=ttl)
    result = client_source(dns, clock, "a.example").fetch()
    assert result.refresh_in == refresh_in


def test_only_due_names_are_asked_again(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("short.example", "10.0.0.1", ttl=60)
    dns.ok("long.example", "10.0.0.2", ttl=600)
    source = client_source(dns, clock, "short.example", "long.example")
    source.fetch()
    clock.advance(30)
    result = source.fetch()
    assert len(dns.calls) == 1, "nothing is due yet"
    assert source.last_outcomes == {}
    assert result.refresh_in == 30
    assert addresses(result) == {"10.0.0.1", "10.0.0.2"}
    clock.advance(30)
    result = source.fetch()
    assert dns.last == ["short.example"]
    assert result.refresh_in == 60  # short is next due again, long in 540 s
    clock.advance(540)
    source.fetch()
    assert dns.last == ["long.example", "short.example"]


def test_names_due_within_the_slack_join_the_batch(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("a.example", "10.0.0.1", ttl=60)
    dns.ok("b.example", "10.0.0.2", ttl=90)
    source = client_source(dns, clock, "a.example", "b.example")
    source.fetch()
    clock.advance(60)
    source.fetch()  # a is due at 120 now, b at 90
    dns.ok("b.example", "10.0.0.2", ttl=30 + DUE_SLACK / 2)
    clock.advance(30)
    source.fetch()  # b is due at 120 + DUE_SLACK / 2
    clock.advance(30)
    source.fetch()
    assert dns.last == ["a.example", "b.example"]


# --- client names: changes and failures ---


def test_moved_address_is_replaced_at_once(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("home.example", "198.51.100.7")
    source = client_source(dns, clock, "home.example")
    assert addresses(source.fetch()) == {"198.51.100.7"}
    dns.ok("home.example", "198.51.100.99")
    clock.advance(60)
    assert addresses(source.fetch()) == {"198.51.100.99"}


def test_failing_name_keeps_last_known_until_max_stale(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("home.example", "198.51.100.7", ttl=60)
    dns.ok("other.example", "198.51.100.8", ttl=60)
    source = client_source(dns, clock, "home.example", "other.example", max_stale=HOUR)
    source.fetch()
    dns.set("home.example", "timeout")
    clock.advance(60)
    result = source.fetch()
    assert addresses(result) == {"198.51.100.7", "198.51.100.8"}
    assert source.last_outcomes == {"timeout": 1, "ok": 1}
    assert result.refresh_in == 30, "a failing name is asked again at min_refresh"
    clock.advance(HOUR - 60)  # an hour after the last answer: still kept
    assert "198.51.100.7" in addresses(source.fetch())
    clock.advance(30)  # past max_stale; due alone, but its neighbour answers: no error
    assert addresses(source.fetch()) == {"198.51.100.8"}
    assert dns.last == ["home.example"]
    dns.ok("home.example", "198.51.100.7")
    clock.advance(30)
    assert addresses(source.fetch()) == {"198.51.100.7", "198.51.100.8"}


@pytest.mark.parametrize("failure", ["timeout", "servfail", "refused", "error"])
def test_every_due_name_failing_raises(dns: FakeResolver, clock: Clock, failure: Outcome) -> None:
    dns.ok("a.example", "10.0.0.1")
    dns.ok("b.example", "10.0.0.2")
    source = client_source(dns, clock, "a.example", "b.example")
    source.fetch()
    dns.set("a.example", failure)
    dns.set("b.example", failure)
    clock.advance(60)
    with pytest.raises(SourceError, match=f"2 {failure}"):
        source.fetch()
    assert source.last_outcomes == {failure: 2}
    # The names kept what they had: once DNS is back for one name, both are served.
    dns.ok("a.example", "10.0.0.1")
    clock.advance(30)
    assert addresses(source.fetch()) == {"10.0.0.1", "10.0.0.2"}


def test_first_fetch_with_resolver_down_raises(dns: FakeResolver, clock: Clock) -> None:
    dns.set("a.example", "timeout")
    with pytest.raises(SourceError, match="reachable"):
        client_source(dns, clock, "a.example").fetch()


def test_nxdomain_removes_the_name(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("gone.example", "198.51.100.7")
    dns.ok("kept.example", "198.51.100.8")
    source = client_source(dns, clock, "gone.example", "kept.example")
    source.fetch()
    dns.set("gone.example", "nxdomain", ttl=120)
    clock.advance(60)
    result = source.fetch()
    assert addresses(result) == {"198.51.100.8"}
    assert source.last_outcomes == {"nxdomain": 1, "ok": 1}
    # NXDOMAIN for every due name is an answer, not an outage: no error.
    dns.set("kept.example", "nxdomain")
    clock.advance(120)
    assert addresses(source.fetch()) == set()


def test_nodata_empties_the_name(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("a.example", "10.0.0.1")
    source = client_source(dns, clock, "a.example")
    source.fetch()
    dns.set("a.example", "nodata")
    clock.advance(60)
    assert addresses(source.fetch()) == set()


def test_failed_aaaa_keeps_ipv6_while_ipv4_moves(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("dual.example", "198.51.100.7", "2001:db8::7")
    source = client_source(dns, clock, "dual.example")
    source.fetch()
    dns.split("dual.example", Lookup("ok", ("198.51.100.9",), 60), Lookup("timeout"))
    clock.advance(60)
    result = source.fetch()
    assert addresses(result) == {"198.51.100.9", "2001:db8::7"}
    assert result.refresh_in == 30  # the failed half is asked again soon


def test_per_name_cap_rejects_the_rest(dns: FakeResolver, clock: Clock) -> None:
    many = [f"10.0.0.{i}" for i in range(12, 0, -1)]
    dns.ok("wild.example", *many)
    dns.ok("fine.example", "10.1.0.1")
    source = client_source(dns, clock, "wild.example", "fine.example", max_addresses=8)
    result = source.fetch()
    assert addresses(result) == {f"10.0.0.{i}" for i in range(1, 9)} | {"10.1.0.1"}
    assert result.rejected_count == 4
    assert {r.text for r in result.rejected_sample} == {f"10.0.0.{i}" for i in range(9, 13)}
    assert all(r.where == "wild.example" for r in result.rejected_sample)
    assert "has 12 IPv4 addresses, more than max_addresses = 8" in str(result.rejected_sample[0])


def test_the_cap_is_per_family_so_many_a_records_keep_the_aaaa(
    dns: FakeResolver, clock: Clock
) -> None:
    dns.ok("dual.example", *[f"10.0.0.{i}" for i in range(1, 11)], "2001:db8::2", "2001:db8::1")
    source = client_source(dns, clock, "dual.example", max_addresses=8)
    result = source.fetch()
    assert addresses(result) == {f"10.0.0.{i}" for i in range(1, 9)} | {
        "2001:db8::1",
        "2001:db8::2",
    }
    assert result.rejected_count == 2


def test_refresh_in_is_the_earliest_expiry(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("a.example", "10.0.0.1", ttl=300)
    dns.ok("b.example", "10.0.0.2", ttl=90)
    source = client_source(dns, clock, "a.example", "b.example")
    assert source.fetch().refresh_in == 90
    clock.advance(50)
    assert source.fetch().refresh_in == 40


# --- destination hosts ---


def hosts_source(
    dns: FakeResolver, clock: Clock, *hosts: str, linger: float = 600.0
) -> HostsSource:
    destination = Destination(
        "bitbucket", (), (22, 443), hosts=hosts, linger=linger, min_refresh=30.0, max_refresh=HOUR
    )
    return HostsSource(destination, dns, clock=clock)


def test_destination_address_lingers_after_leaving_dns(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("bitbucket.org", "104.192.141.1", "2406:da00:ff00::22c3:9b0a", ttl=60)
    source = hosts_source(dns, clock, "bitbucket.org", linger=600)
    first = source.fetch()
    assert first.entries.addresses_v4 == {"104.192.141.1"}
    assert first.entries.addresses_v6 == {"2406:da00:ff00::22c3:9b0a"}
    dns.ok("bitbucket.org", "104.192.141.2", "2406:da00:ff00::22c3:9b0a", ttl=60)
    clock.advance(60)
    moved = source.fetch()
    assert addresses(moved) == {"104.192.141.1", "104.192.141.2", "2406:da00:ff00::22c3:9b0a"}
    assert "lingering" in moved.origin
    clock.advance(599)
    assert "104.192.141.1" in addresses(source.fetch())
    clock.advance(1)  # 600 s after it left: the old address is dropped
    result = source.fetch()
    assert addresses(result) == {"104.192.141.2", "2406:da00:ff00::22c3:9b0a"}


def test_lingering_drop_time_wakes_the_source(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("bitbucket.org", "104.192.141.1", ttl=3000)
    source = hosts_source(dns, clock, "bitbucket.org", linger=100)
    source.fetch()
    dns.ok("bitbucket.org", "104.192.141.2", ttl=3000)
    clock.advance(3000)
    assert source.fetch().refresh_in == 100  # not the 3000 s TTL
    clock.advance(100)
    asked = len(dns.calls)
    assert addresses(source.fetch()) == {"104.192.141.2"}
    assert len(dns.calls) == asked, "dropping a lingering address asks DNS nothing"


def test_address_coming_back_stops_lingering(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("bitbucket.org", "104.192.141.1")
    source = hosts_source(dns, clock, "bitbucket.org", linger=100)
    source.fetch()
    dns.ok("bitbucket.org", "104.192.141.2")
    clock.advance(60)
    source.fetch()
    dns.ok("bitbucket.org", "104.192.141.1")
    clock.advance(60)
    source.fetch()
    clock.advance(60)  # well past the first linger's end
    result = source.fetch()
    assert "104.192.141.1" in addresses(result)
    assert "lingering" in result.origin  # .2 left in its turn


def test_destination_keeps_addresses_while_dns_fails(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("bitbucket.org", "104.192.141.1")
    dns.ok("altssh.bitbucket.org", "104.192.141.7")
    source = hosts_source(dns, clock, "bitbucket.org", "altssh.bitbucket.org")
    source.fetch()
    dns.set("altssh.bitbucket.org", "servfail")
    for _ in range(10):
        clock.advance(HOUR * 24)  # days: far past any max_stale and linger
        assert addresses(source.fetch()) == {"104.192.141.1", "104.192.141.7"}


def test_destination_all_failing_raises(dns: FakeResolver, clock: Clock) -> None:
    dns.set("bitbucket.org", "timeout")
    source = hosts_source(dns, clock, "bitbucket.org")
    with pytest.raises(SourceError):
        source.fetch()


def test_destination_nxdomain_lingers(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("old.example", "198.51.100.1")
    source = hosts_source(dns, clock, "old.example", linger=300)
    source.fetch()
    dns.set("old.example", "nxdomain")
    clock.advance(60)
    assert addresses(source.fetch()) == {"198.51.100.1"}
    clock.advance(300)
    assert addresses(source.fetch()) == set()


def test_one_broken_name_due_alone_is_no_outage(dns: FakeResolver, clock: Clock) -> None:
    """A name whose own servers fail must not mark the whole group stale every retry."""
    dns.ok("fine.example", "10.0.0.1", ttl=HOUR)
    dns.set("broken.example", "servfail")
    source = client_source(dns, clock, "fine.example", "broken.example")
    assert addresses(source.fetch()) == {"10.0.0.1"}
    for _ in range(5):
        clock.advance(30)
        assert addresses(source.fetch()) == {"10.0.0.1"}
        assert dns.last == ["broken.example"]
        assert source.last_outcomes == {"servfail": 1}


def test_outage_noticed_once_every_name_has_failed(dns: FakeResolver, clock: Clock) -> None:
    """Staggered names: the first failing batch is served from cache, the last one raises."""
    dns.ok("a.example", "10.0.0.1", ttl=60)
    dns.ok("b.example", "10.0.0.2", ttl=120)
    source = client_source(dns, clock, "a.example", "b.example")
    source.fetch()
    dns.set("a.example", "timeout")
    dns.set("b.example", "timeout")
    clock.advance(60)
    assert addresses(source.fetch()) == {"10.0.0.1", "10.0.0.2"}  # b's answer is fresh
    clock.advance(60)
    with pytest.raises(SourceError):
        source.fetch()


# --- what a broken name does, and how it is reported ---


def test_loop_in_a_healthy_group_is_rejected_and_dropped(dns: FakeResolver, clock: Clock) -> None:
    """A loop is a definite failure: the name's old address goes at once, and it is seen."""
    dns.ok("loop.example", "198.51.100.7")
    dns.ok("fine.example", "198.51.100.8")
    source = client_source(dns, clock, "loop.example", "fine.example", max_stale=HOUR)
    assert source.fetch().rejected_count == 0
    why = "CNAME loop at loop.example: loop.example -> b.example -> loop.example"
    dns.set("loop.example", "loop", ttl=30, detail=why)
    clock.advance(60)
    result = source.fetch()
    assert addresses(result) == {"198.51.100.8"}
    assert source.last_outcomes == {"loop": 1, "ok": 1}
    assert result.rejected_count == 1
    assert str(result.rejected_sample[0]) == f"loop.example: {why}"
    dns.ok("loop.example", "198.51.100.7")  # mended: served again, no longer rejected
    clock.advance(30)
    result = source.fetch()
    assert addresses(result) == {"198.51.100.7", "198.51.100.8"}
    assert result.rejected_count == 0


def test_every_name_looping_is_no_outage(dns: FakeResolver, clock: Clock) -> None:
    dns.set("a.example", "loop", detail="CNAME loop at a.example: a.example -> a.example")
    result = client_source(dns, clock, "a.example").fetch()
    assert addresses(result) == set()
    assert result.rejected_count == 1


def test_nxdomain_is_rejected_with_its_reason(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("fine.example", "10.0.0.1")
    dns.set("gone.example", "nxdomain", detail="NXDOMAIN from 10.0.0.53: gone.example ...")
    result = client_source(dns, clock, "gone.example", "fine.example").fetch()
    assert [(r.where, r.reason) for r in result.rejected_sample] == [
        ("gone.example", "NXDOMAIN from 10.0.0.53: gone.example ...")
    ]


def test_failing_name_is_rejected_once_it_serves_nothing(dns: FakeResolver, clock: Clock) -> None:
    """Within max_stale it is served from cache (not rejected); past it, it is reported."""
    dns.ok("home.example", "198.51.100.7", ttl=60)
    dns.ok("other.example", "198.51.100.8", ttl=HOUR)
    source = client_source(dns, clock, "home.example", "other.example", max_stale=120)
    source.fetch()
    dns.set("home.example", "servfail", detail="SERVFAIL from 10.0.0.53 for home.example A")
    clock.advance(60)
    assert source.fetch().rejected_count == 0
    clock.advance(90)
    result = source.fetch()
    assert addresses(result) == {"198.51.100.8"}
    assert [str(r) for r in result.rejected_sample] == [
        "home.example: SERVFAIL from 10.0.0.53 for home.example A"
    ]


def test_outage_message_says_what_happened(dns: FakeResolver, clock: Clock) -> None:
    dns.set("a.example", "servfail", detail="SERVFAIL from 10.0.0.53 for a.example A")
    with pytest.raises(SourceError) as failed:
        client_source(dns, clock, "a.example").fetch()
    message = str(failed.value)
    assert "SERVFAIL from 10.0.0.53 for a.example A" in message
    assert "reachable" not in message
    dns.set("a.example", "timeout", detail="timeout: no answer for a.example A from 10.0.0.53")
    with pytest.raises(SourceError, match=r"no answer for a\.example A.*reachable"):
        client_source(dns, clock, "a.example").fetch()


def test_looping_destination_host_lingers_and_is_rejected(dns: FakeResolver, clock: Clock) -> None:
    dns.ok("bitbucket.org", "104.192.141.1")
    dns.ok("altssh.bitbucket.org", "104.192.141.7")
    source = hosts_source(dns, clock, "bitbucket.org", "altssh.bitbucket.org", linger=300)
    source.fetch()
    dns.set("altssh.bitbucket.org", "loop", detail="CNAME loop at altssh.bitbucket.org: ...")
    clock.advance(60)
    result = source.fetch()
    assert "104.192.141.7" in addresses(result)  # lingers, as after NXDOMAIN
    assert result.rejected_count == 1
    clock.advance(300)
    assert addresses(source.fetch()) == {"104.192.141.1"}
