"""DHCP lease files (dnsmasq, Kea memfile v4) as address maps: valid, torn and foreign lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from repogate.errors import SourceError
from repogate.sources.devices import Sighting, leases
from repogate.sources.devices.leases import parse_dnsmasq, parse_kea4, read_leases

NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC).timestamp()
LATER = int(NOW) + 3600  # 13:00:00 UTC
EARLIER = int(NOW) - 60

KEA_HEADER = (
    "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,"
    "hostname,state,user_context,pool_id"
)


def kea(address: str, mac: str, lifetime: int, expire: int, state: int = 0) -> str:
    return f"{address},{mac},01:{mac},{lifetime},{expire},1,0,0,host&#x2cname,{state},,0"


def test_dnsmasq_unexpired_leases_become_sightings() -> None:
    text = (
        f"{LATER} AA:BB:CC:DD:EE:01 10.0.0.5 laptop 01:aa:bb:cc:dd:ee:01\n"
        f"0 aa:bb:cc:dd:ee:02 10.0.0.6 * *\n"  # infinite
        f"{EARLIER} aa:bb:cc:dd:ee:03 10.0.0.7 old *\n"
        f"{LATER - 600} aa:bb:cc:dd:ee:01 10.1.0.5 laptop *\n"  # a second subnet
    )
    parsed = parse_dnsmasq(text, now=NOW, tz=UTC)
    assert parsed.sightings == (
        Sighting("mac", "aa:bb:cc:dd:ee:01", ("10.0.0.5", "10.1.0.5"), "lease until 13:00:00"),
        Sighting("mac", "aa:bb:cc:dd:ee:02", ("10.0.0.6",), "lease never expires"),
    )
    assert parsed.rejected == ()
    assert [(i.where, i.reason) for i in parsed.ignored] == [
        ("line 3", "lease expired at 2025-03-10 11:59:00")
    ]


def test_a_lease_ending_another_day_shows_its_date() -> None:
    line = f"{LATER + 86400} aa:bb:cc:dd:ee:01 10.0.0.5 * *\n"
    (sighting,) = parse_dnsmasq(line, now=NOW, tz=UTC).sightings
    assert sighting.detail == "lease until 2025-03-11 13:00:00"


def test_dnsmasq_torn_and_foreign_lines_are_rejected_and_the_rest_applies() -> None:
    lines = [
        f"{LATER} aa:bb:cc:dd:ee:01 10.0.0.5 a *",
        f"{LATER} aa:bb:cc:dd:ee:02 10.0",  # torn by a rewrite
        f"{LATER} aa:bb:cc:dd:ee:03 10.0.0.300 a *",
        f"{LATER} aa:bb:cc:dd:ee:04 2001:db8::4 a *",
        "-5 aa:bb:cc:dd:ee:05 10.0.0.9 a *",
        f"{LATER} nonsense 10.0.0.10 a *",
        f"{LATER} aa:bb:cc:dd:ee:06 10.0.0.11 a * extra",
        f"{LATER} 32-00:11:22:33:44:55:66:77:88:99 10.0.0.12 ib *",  # InfiniBand
        "\udcff\udcfe",  # a torn multi-byte character
        f"{LATER} aa:bb:cc:dd:ee:07 10.0.0.13 b *",
    ]
    parsed = parse_dnsmasq("\n".join(lines).encode("utf-8", "surrogateescape"), now=NOW)
    assert [s.identity for s in parsed.sightings] == ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:07"]
    reasons = {r.where: r.reason for r in parsed.rejected}
    assert list(reasons) == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7", "line 9"]
    assert reasons["line 2"] == "3 fields, expected 5 (torn or foreign line)"
    assert reasons["line 3"] == "address: '10.0.0.300' is not an IPv4 address"
    assert reasons["line 5"] == "expiry: '-5' is not a whole number"
    assert "not a MAC address" in reasons["line 6"]
    assert [(i.where, i.reason) for i in parsed.ignored] == [
        ("line 8", "hardware type 32, not Ethernet")
    ]


def test_dnsmasq_ipv6_leases_after_the_duid_line_are_ignored_with_a_reason() -> None:
    text = (
        f"{LATER} aa:bb:cc:dd:ee:01 10.0.0.5 a *\n"
        "duid 00:01:00:01:2b:3c:4d:5e:aa:bb:cc:dd:ee:ff\n"
        f"{LATER} 1234567 2001:db8::5 a 00:01:00:01:2b:3c:4d:5e:aa:bb:cc:dd:ee:01\n"
    )
    parsed = parse_dnsmasq(text, now=NOW)
    assert [s.addresses for s in parsed.sightings] == [("10.0.0.5",)]
    assert parsed.rejected == ()
    assert parsed.ignored[0].where == "line 3"
    assert parsed.ignored[0].reason.startswith("DHCPv6 lease: it names a DUID")


def test_an_empty_lease_file_is_no_leases() -> None:
    parsed = parse_dnsmasq("", now=NOW)
    assert (parsed.sightings, parsed.rejected, parsed.ignored) == ((), (), ())


def test_kea_last_line_per_address_wins_and_only_active_leases_count() -> None:
    lines = [
        KEA_HEADER,
        kea("10.0.0.5", "aa:bb:cc:dd:ee:01", 3600, LATER - 3000),
        kea("10.0.0.5", "aa:bb:cc:dd:ee:01", 3600, LATER),  # renewed
        kea("10.0.0.6", "aa:bb:cc:dd:ee:02", 3600, LATER),
        kea("10.0.0.6", "aa:bb:cc:dd:ee:02", 3600, LATER, state=3),  # released
        kea("10.0.0.7", "aa:bb:cc:dd:ee:03", 3600, LATER, state=1),
        kea("10.0.0.8", "aa:bb:cc:dd:ee:04", 3600, LATER, state=2),
        kea("10.0.0.9", "aa:bb:cc:dd:ee:05", 3600, EARLIER),
        kea("10.0.0.10", "aa:bb:cc:dd:ee:06", 3600, LATER),
        kea("10.0.0.10", "aa:bb:cc:dd:ee:06", 0, int(NOW) - 5),  # deleted
        kea("10.0.0.11", "aa:bb:cc:dd:ee:07", 0xFFFFFFFF, 5),  # infinite
        kea("10.0.0.12", "", 3600, LATER),
        kea("10.0.0.13", "aa:bb:cc:dd:ee:05", 3600, LATER, state=7),
    ]
    parsed = parse_kea4("\n".join(lines) + "\n", now=NOW, tz=UTC)
    assert parsed.sightings == (
        Sighting("mac", "aa:bb:cc:dd:ee:01", ("10.0.0.5",), "lease until 13:00:00"),
        Sighting("mac", "aa:bb:cc:dd:ee:07", ("10.0.0.11",), "lease never expires"),
    )
    assert parsed.rejected == ()
    assert sorted((i.where, i.reason) for i in parsed.ignored) == [
        ("line 10", "lease deleted"),
        ("line 12", "lease without a hardware address (client id only)"),
        ("line 13", "lease in state 7"),
        ("line 5", "lease released"),
        ("line 6", "lease declined"),
        ("line 7", "lease expired-reclaimed"),
        ("line 8", "lease expired at 2025-03-10 11:59:00"),
    ]


def test_kea_a_torn_last_line_revokes_its_address_and_is_rejected() -> None:
    lines = [
        KEA_HEADER,
        kea("10.0.0.5", "aa:bb:cc:dd:ee:01", 3600, LATER),
        kea("10.0.0.6", "aa:bb:cc:dd:ee:02", 3600, LATER),
        "10.0.0.5,aa:bb:cc:dd:ee:01,01:aa:bb,36",  # torn while Kea wrote it
        kea("10.0.0.7", "aa:bb:cc:dd:ee:03", 3600, LATER) + ",future-column",
        kea("10.0.0.8", "zz", 3600, LATER),
        kea("10.0.0.9", "aa:bb:cc:dd:ee:04", 3600, LATER).replace(",0,,0", ",x,,0"),
        "garbage",
    ]
    parsed = parse_kea4("\n".join(lines), now=NOW)
    assert [s.addresses for s in parsed.sightings] == [("10.0.0.6",)]
    reasons = {r.where: r.reason for r in parsed.rejected}
    assert list(reasons) == ["line 4", "line 5", "line 6", "line 7", "line 8"]
    assert (
        reasons["line 4"] == "4 fields where the header has 12 (torn line or another Kea version)"
    )
    assert reasons["line 5"].startswith("13 fields where the header has 12")
    assert "not a MAC address" in reasons["line 6"]
    assert reasons["line 7"] == "state: 'x' is not a whole number"


def test_kea_columns_are_found_by_name_and_a_later_header_replaces_the_first() -> None:
    old = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname"
    lines = [
        old,
        f"10.0.0.5,aa:bb:cc:dd:ee:01,,3600,{LATER},1,0,0,",  # no state column: active
        "expire,address,valid_lifetime,hwaddr",
    ]
    parsed = parse_kea4("\n".join(lines), now=NOW)  # a header starts with `address,`
    assert parsed.rejected[0].where == "line 3"
    lines[2] = "address,expire,valid_lifetime,hwaddr,state"
    lines.append(f"10.0.0.6,{LATER},3600,AA-BB-CC-DD-EE-02,0")
    parsed = parse_kea4("\n".join(lines), now=NOW)
    assert [s.identity for s in parsed.sightings] == ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"10.0.0.5,aa:bb:cc:dd:ee:01,,3600,{LATER},1,0,0,,0,", "no `address,hwaddr,...` header"),
        ("address,duid,valid_lifetime,expire,subnet_id,pref_lifetime", "DHCPv6 lease file"),
        ("address,client_id,valid_lifetime\n", "the header has no hwaddr, expire"),
        ("address,hwaddr,valid_lifetime,expire\n\x00\x00", "binary"),
    ],
)
def test_a_file_that_is_no_kea_v4_lease_file_raises(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_kea4(text, now=NOW)


def test_read_leases_reads_either_format_and_an_unreadable_file_raises(tmp_path: Path) -> None:
    dnsmasq = tmp_path / "dnsmasq.leases"
    dnsmasq.write_text(f"{LATER} aa:bb:cc:dd:ee:01 10.0.0.5 a *\n")
    kea_file = tmp_path / "kea-leases4.csv"
    kea_file.write_text(f"{KEA_HEADER}\n{kea('10.0.0.6', 'aa:bb:cc:dd:ee:02', 60, LATER)}\n")
    found = read_leases(dnsmasq, lease_format="dnsmasq", now=NOW)
    assert [s.addresses for s in found.sightings] == [("10.0.0.5",)]
    found = read_leases(kea_file, lease_format="kea", now=NOW)
    assert [s.addresses for s in found.sightings] == [("10.0.0.6",)]
    with pytest.raises(SourceError, match="cannot read"):
        read_leases(tmp_path / "missing", lease_format="dnsmasq", now=NOW)


# -- a dnsmasq file read while dnsmasq rewrites it ----------------------------------------

WHOLE = f"{LATER} aa:bb:cc:dd:ee:01 10.0.0.5 a *\n{LATER} aa:bb:cc:dd:ee:02 10.0.0.6 b *\n"
CUT = WHOLE[: WHOLE.index("10.0.0.6") + 4]  # inside the second lease: "...10.0."


def pauses_doing(monkeypatch: pytest.MonkeyPatch, *actions: Callable[[], object]) -> list[float]:
    """The pauses between reads, recorded instead of slept; the n-th runs `actions[n]`
    (a rewrite landing between two reads), so the test does not race a thread."""
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        if len(pauses) < len(actions):
            actions[len(pauses)]()
        pauses.append(seconds)

    monkeypatch.setattr(time, "sleep", pause)  # the module's pause (leases.time.sleep)
    return pauses


def test_a_dnsmasq_file_completed_between_reads_is_parsed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dnsmasq.leases"
    path.write_text(CUT)
    pauses = pauses_doing(monkeypatch, lambda: path.write_text(WHOLE))
    found = read_leases(path, lease_format="dnsmasq", now=NOW)
    assert [s.addresses for s in found.sightings] == [("10.0.0.5",), ("10.0.0.6",)]
    assert found.rejected == ()
    assert pauses == [leases.REREAD_PAUSE]


def test_a_dnsmasq_file_that_stays_cut_mid_line_fails_rather_than_revoking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsed, it would admit only the leases before the cut: the group's last good
    entries must be kept instead."""
    path = tmp_path / "dnsmasq.leases"
    path.write_text(CUT)
    pauses = pauses_doing(monkeypatch)
    with pytest.raises(SourceError, match=r"ends mid-line in 3 reads .*cut short") as caught:
        read_leases(path, lease_format="dnsmasq", now=NOW)
    assert str(path) in str(caught.value)
    assert pauses == [leases.REREAD_PAUSE] * (leases.READ_ATTEMPTS - 1)


def test_an_empty_dnsmasq_file_read_again_is_no_leases_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dnsmasq.leases"
    path.write_bytes(b"")
    pauses = pauses_doing(monkeypatch)
    found = read_leases(path, lease_format="dnsmasq", now=NOW)
    assert (found.sightings, found.rejected, found.ignored) == ((), (), ())
    assert len(pauses) == leases.READ_ATTEMPTS - 1  # empty may be mid-rewrite: read again


def test_a_whole_dnsmasq_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dnsmasq.leases"
    path.write_text(WHOLE)
    pauses = pauses_doing(monkeypatch)
    assert len(read_leases(path, lease_format="dnsmasq", now=NOW).sightings) == 2
    assert pauses == []
