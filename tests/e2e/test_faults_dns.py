"""The fault suite, DNS: alice is approved only by her dynamic-DNS name and Bitbucket is
known only by its names, both served by a real DNS server in the lab's `other` namespace,
which then fails (see tests/e2e/faults.py).

dnsmasq serves most faults: down, silent, slow (behind lab.dns_faults.SlowRelay, since
kernels without sch_netem cannot delay with `tc`), NXDOMAIN for one name, answers too big
for UDP (truncated: the resolver must ask again over TCP) and a name with 500 addresses.
BIND (lab.bind) serves what dnsmasq will not: SERVFAIL from a zone that fails to load,
and a CNAME loop.

`status` is read three times: before the fault it must not already say what the fault
should make it say (else the check proves nothing), during the fault it must say it, and
after the repair it must stop saying it (the daemon recovers, not only survives).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from lab.bind import BindServer
from lab.config import office_group
from lab.dns import DnsServer
from lab.dns_faults import SlowRelay, TcpQueryCounter
from lab.topology import Lab
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import StartDaemon, StartLoop, sync, wait_until
from tests.e2e.test_daemon import configure as configure_lab

pytestmark = [pytest.mark.root, pytest.mark.fault]
DNS_ADDRESS = "203.0.113.10"
BEHIND_RELAY = 5353  # dnsmasq's port when the slow relay has port 53
RESOLVER_TIMEOUT = 1.0  # per attempt (the config's `resolver.timeout`)
SLOW = 1.5  # seconds each query is held: past one attempt, so every attempt times out
ALICE_NAME, GONE_NAME, BITBUCKET_NAME = "alice.lab.test", "laptop-7.lab.test", "bitbucket.lab.test"
LOOP_NAME = "loop.lab.test"
HOSTS = {
    ALICE_NAME: ("10.20.0.10", "2001:db8:20::10"),
    GONE_NAME: ("10.77.0.7",),
    BITBUCKET_NAME: ("198.51.100.10", "2001:db8:bb::10"),
}
BIG = 100  # A records: about 1,650 bytes, past the resolver's EDNS size of 1,232 (truncated)
MANY = 500


def following(first: str, count: int) -> list[str]:
    """`count` addresses from `first` on (none of them mallory's: 10.66.0.66)."""
    start = ipaddress.ip_address(first)
    return [str(start + i) for i in range(count)]


def grown(count: int) -> dict[str, list[str]]:
    """laptop-7 (a client name) and Bitbucket (a destination host) with `count` IPv4
    addresses each, their own first; Bitbucket keeps its IPv6 address."""
    return {
        GONE_NAME: following(HOSTS[GONE_NAME][0], count),
        BITBUCKET_NAME: [*following(HOSTS[BITBUCKET_NAME][0], count), HOSTS[BITBUCKET_NAME][1]],
    }


def shrunk() -> dict[str, list[str]]:
    return {name: list(HOSTS[name]) for name in (GONE_NAME, BITBUCKET_NAME)}


def dns_config(lab: Lab) -> None:
    overrides: dict[str, Any] = {
        "resolver": {"nameservers": [DNS_ADDRESS], "timeout": f"{RESOLVER_TIMEOUT:g}s"},
        "destinations": {
            "bitbucket": {"networks": None, "hosts": [BITBUCKET_NAME], "min_refresh": "1s"}
        },
        "clients": [
            office_group(["10.30.0.7"]),
            {
                "name": "home",
                "type": "dns",
                "names": [ALICE_NAME, GONE_NAME],
                "min_refresh": "1s",
                "max_refresh": "2s",
            },
        ],
    }
    configure_lab(lab, overrides)


Server = TypeVar("Server")


@dataclass(frozen=True)
class Case(Generic[Server]):
    """One fault: how to do and undo it, and what status must say meanwhile."""

    fault: str  # the row name in docs/reliability.md
    damage: Callable[[Server], None]
    repair: Callable[[Server], None]
    said: tuple[str, ...]  # regular expressions status must all match during the fault
    mended: str = ""  # one that must stop matching after the repair (default: said[0])
    via_tcp: bool = False  # the answers only fit over TCP: TCP queries must reach the server
    gated: int = 0  # IPv4 addresses the kernel must gate for Bitbucket during the fault


def run_fault(
    lab: Lab,
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    case: Case[Server],
    server: Server,
    *,
    tcp: TcpQueryCounter | None = None,
) -> None:
    """The DNS faults' shared course: daemon, loops, damage, status, repair, verdict."""
    mended = case.mended or case.said[0]
    dns_config(lab)
    try:
        sync(lab)
        daemon = start_daemon()
        daemon.wait_ready()
        run = FaultRun(case.fault, "dns", start_loop)
        notes = run.result.notes
        before = status(lab)
        already = [said for said in case.said if re.search(said, before)]
        if already:
            notes.append(f"status said {already} before the fault")
        tcp_before = tcp.count() if tcp is not None else 0
        run.inject()
        case.damage(server)
        seen = ""

        def says() -> bool:
            nonlocal seen
            seen = status(lab)
            return all(re.search(said, seen) for said in case.said)

        noticed = wait_until(says, 15.0, step=0.5)
        if noticed is not None:
            notes.append(f"status said {quote(seen, case.said[-1])} after {noticed:.1f} s")
        else:
            notes.append(f"status did not match {list(case.said)} within 15 s")
        time.sleep(2.0)  # several refreshes into the fault
        gated = gated_v4(lab) if case.gated else 0
        if case.gated:
            notes.append(f"the kernel gated {gated} IPv4 addresses for Bitbucket")
        tcp_queries = tcp.count() - tcp_before if tcp is not None else 0
        if case.via_tcp:
            notes.append(f"{tcp_queries} queries reached the server over TCP")
        case.repair(server)
        run.clear()
        recovered = wait_until(lambda: not re.search(mended, status(lab)), 15.0, step=0.5)
        if noticed is not None:
            notes.append(
                f"it stopped {recovered:.1f} s after the repair"
                if recovered is not None
                else "it still said so 15 s after the repair"
            )
        result = run.finish(daemon, settle=1.0)
        result.status_ok = not already and noticed is not None and recovered is not None
        run.check(result, f"{daemon.context()}\nlast status:\n{seen}")
        # What status says, checked where it happens: the kernel, the server's TCP port.
        assert gated >= case.gated, f"{result}\nlast status:\n{seen}"
        assert tcp_queries > 0 or not case.via_tcp, f"{result}\nlast status:\n{seen}"
    finally:
        configure_lab(lab)


def status(lab: Lab) -> str:
    return lab.repogate("status").stdout


def gated_v4(lab: Lab) -> int:
    """IPv4 addresses the kernel gates for Bitbucket (its set holds prefixes and ranges)."""
    listing = json.loads(
        lab.nft("-j", "list", "set", "inet", lab.table, "dest_bitbucket_v4").stdout
    )
    total = 0
    for item in listing["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            value = (
                element["elem"]["val"]
                if isinstance(element, dict) and "elem" in element
                else element
            )
            if isinstance(value, str):
                total += 1
            elif "prefix" in value:
                total += 2 ** (32 - int(value["prefix"]["len"]))
            else:
                low, high = (ipaddress.ip_address(end) for end in value["range"])
                total += int(high) - int(low) + 1
    return total


def quote(text: str, pattern: str, width: int = 160) -> str:
    """The status line matching `pattern`, cut to `width`, for the result's notes."""
    line = next((line.strip() for line in text.splitlines() if re.search(pattern, line)), "")
    return repr(line if len(line) <= width else line[: width - 3] + "...")


# -- dnsmasq: down, silent, NXDOMAIN, truncated, 500 addresses ------------------------------


@pytest.fixture
def dns(daemon_lab: Lab, tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(
        workdir=tmp_path / "dns",
        netns=daemon_lab.ns("other"),
        address=DNS_ADDRESS,
        ttl=1,
        hosts=dict(HOSTS),
    )
    with server:
        yield server


FAILING = r"home: FAILING \(no DNS answer for any of"
DNSMASQ_FAULTS: list[Case[DnsServer]] = [
    Case("DNS server down", lambda d: d.stop(), lambda d: d.start(), (FAILING,)),
    Case("DNS server silent (black hole)", lambda d: d.pause(), lambda d: d.resume(), (FAILING,)),
    Case(
        "NXDOMAIN for one name of a healthy group",
        lambda d: d.set_hosts({GONE_NAME: []}),
        lambda d: d.set_hosts({GONE_NAME: HOSTS[GONE_NAME]}),
        # status names the name that stopped resolving; alice's keeps the group ok
        (rf"home: ok, .*NXDOMAIN from {DNS_ADDRESS}: {re.escape(GONE_NAME)} does not exist",),
    ),
    Case(
        "DNS answers truncated (TCP fallback)",
        lambda d: d.set_hosts(grown(BIG)),
        lambda d: d.set_hosts(shrunk()),
        # Every address arrived though no UDP answer could hold them: Bitbucket has all
        # 101, and laptop-7's 100 are counted (then capped at max_addresses, 8).
        (
            rf"destination bitbucket \(hosts\): ok, {BIG + 1} entries",
            rf"{re.escape(GONE_NAME)} has {BIG} IPv4 addresses, more than max_addresses = 8",
        ),
        mended=rf"{re.escape(GONE_NAME)} has {BIG} IPv4 addresses",
        via_tcp=True,
    ),
    Case(
        "one name with 500 addresses (client and destination)",
        lambda d: d.set_hosts(grown(MANY)),
        lambda d: d.set_hosts(shrunk()),
        # The destination gates all 500 (no cap: a missing address would go ungated);
        # the client group admits the name's lowest 8 (max_addresses, documented in
        # config.reference) and reports the other 492 as rejected.
        (
            rf"destination bitbucket \(hosts\): ok, {MANY + 1} entries",
            rf"home: ok, 10 entries, {MANY - 8} entries rejected \([^;]*"
            rf"{re.escape(GONE_NAME)} has {MANY} IPv4 addresses, more than max_addresses = 8",
        ),
        mended=rf"{re.escape(GONE_NAME)} has {MANY} IPv4 addresses",
        via_tcp=True,
        gated=MANY,
    ),
]


@pytest.mark.parametrize("case", DNSMASQ_FAULTS, ids=[f.fault for f in DNSMASQ_FAULTS])
def test_a_failing_dns_server_never_changes_who_gets_in(
    daemon_lab: Lab,
    dns: DnsServer,
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    case: Case[DnsServer],
) -> None:
    with TcpQueryCounter(daemon_lab.ns("other")) as tcp:
        run_fault(daemon_lab, start_daemon, start_loop, case, dns, tcp=tcp)


# -- dnsmasq behind a relay that holds every query: slower than the timeout -----------------


@pytest.fixture
def slow_dns(daemon_lab: Lab, tmp_path: Path) -> Iterator[SlowRelay]:
    netns = daemon_lab.ns("other")
    server = DnsServer(
        workdir=tmp_path / "dns",
        netns=netns,
        address=DNS_ADDRESS,
        port=BEHIND_RELAY,
        ttl=1,
        hosts=dict(HOSTS),
    )
    with server, SlowRelay(netns, (DNS_ADDRESS, 53), (DNS_ADDRESS, BEHIND_RELAY)) as relay:
        yield relay


SLOW_FAULT: Case[SlowRelay] = Case(
    "DNS server slower than the resolver timeout",
    lambda r: r.set_delay(SLOW),
    lambda r: r.set_delay(0.0),
    (rf"{FAILING} 2 names \(2 timeout; .*serving its last known good entries",),
)


def test_a_slow_dns_server_never_changes_who_gets_in(
    daemon_lab: Lab, slow_dns: SlowRelay, start_daemon: StartDaemon, start_loop: StartLoop
) -> None:
    assert SLOW > RESOLVER_TIMEOUT  # every attempt times out, and the answer comes later
    run_fault(daemon_lab, start_daemon, start_loop, SLOW_FAULT, slow_dns)


# -- BIND: a zone that fails to load (SERVFAIL), a CNAME loop -------------------------------


@pytest.fixture
def bind(daemon_lab: Lab, tmp_path: Path) -> Iterator[BindServer]:
    server = BindServer(
        workdir=tmp_path / "bind",
        netns=daemon_lab.ns("other"),
        address=DNS_ADDRESS,
        ttl=1,
        hosts=dict(HOSTS),
    )
    with server:
        yield server


BIND_FAULTS: list[Case[BindServer]] = [
    Case(
        "DNS server answers SERVFAIL (its zone fails to load)",
        lambda b: b.break_zone(),
        lambda b: b.mend_zone(),
        (rf"{FAILING} 2 names \(2 servfail; e\.g\. SERVFAIL from {DNS_ADDRESS}",),
    ),
    Case(
        "CNAME loop in one name of a healthy group",
        lambda b: b.set_records(
            hosts={GONE_NAME: []}, cnames={GONE_NAME: LOOP_NAME, LOOP_NAME: GONE_NAME}
        ),
        lambda b: b.set_records(
            hosts={GONE_NAME: HOSTS[GONE_NAME]}, cnames={GONE_NAME: None, LOOP_NAME: None}
        ),
        # status names the looping name; alice's answers keep the group ok
        (rf"home: ok, .*CNAME loop at {re.escape(GONE_NAME)}: ",),
    ),
]


@pytest.mark.parametrize("case", BIND_FAULTS, ids=[f.fault for f in BIND_FAULTS])
def test_a_broken_zone_never_changes_who_gets_in(
    daemon_lab: Lab,
    bind: BindServer,
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    case: Case[BindServer],
) -> None:
    run_fault(daemon_lab, start_daemon, start_loop, case, bind)
