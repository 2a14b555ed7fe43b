"""Dynamic sources in the lab: a real DNS server (dnsmasq) in the `other` namespace.

Home workers' dynamic-DNS names and Bitbucket's own host names resolve through
it; the daemon follows a name that moves, and keeps the last known addresses
(reported stale) when the server dies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.config import office_group
from lab.dns import DnsServer
from lab.topology import Lab
from tests.e2e.test_daemon import (
    BOB,
    BOB_NEIGHBOUR,
    OFFICE_WITHOUT_BOB,
    StartDaemon,
    check_enforcing,
    configure,
    scrape_metrics,
    wait_until,
)

DNS_ADDRESS = "203.0.113.10"  # the `other` namespace's address, reachable from the gateway
TTL = 2
DDNS_NAME = "bob.lab.test"
HOSTS = {
    DDNS_NAME: (BOB,),
    "bitbucket.lab.test": ("198.51.100.10", "2001:db8:bb::10"),
    "altssh.lab.test": ("198.51.100.20",),
}


@pytest.fixture
def dns(daemon_lab: Lab, tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(
        workdir=tmp_path / "dns",
        netns=daemon_lab.ns("other"),
        address=DNS_ADDRESS,
        ttl=TTL,
        hosts=dict(HOSTS),
    )
    with server:
        yield server


def dynamic_config(lab: Lab) -> None:
    """Bitbucket known only by its names, bob only by his dynamic-DNS name."""
    overrides: dict[str, Any] = {
        "resolver": {"nameservers": [DNS_ADDRESS], "timeout": "1s"},
        "destinations": {
            "bitbucket": {
                "networks": None,
                "hosts": ["bitbucket.lab.test", "altssh.lab.test"],
                "min_refresh": "1s",
            }
        },
        "clients": [
            office_group(OFFICE_WITHOUT_BOB),
            {
                "name": "home",
                "type": "dns",
                "names": [DDNS_NAME],
                "min_refresh": "1s",
                "max_refresh": "10s",
            },
        ],
    }
    configure(lab, overrides)


def test_a_moving_ddns_name_and_a_dead_dns_server(
    daemon_lab: Lab, dns: DnsServer, start_daemon: StartDaemon
) -> None:
    lab = daemon_lab
    dynamic_config(lab)
    daemon = start_daemon()
    daemon.wait_ready()

    # Bob's name and Bitbucket's names resolve through the lab's DNS server.
    took = wait_until(
        lambda: (
            not check_enforcing(
                lab, allowed=[("alice", None), ("bob", BOB)], refused=[("bob", BOB_NEIGHBOUR)]
            )
        ),
        timeout=6,
    )
    assert took is not None, "\n".join(check_enforcing(lab)) + daemon.context()

    # The name moves: within TTL plus a refresh, the new address gets in, the old is out.
    moved = time.monotonic()
    dns.set_hosts({DDNS_NAME: [BOB_NEIGHBOUR]})
    took = wait_until(
        lambda: not check_enforcing(lab, allowed=[("bob", BOB_NEIGHBOUR)], refused=[("bob", BOB)]),
        timeout=TTL + 6,
    )
    assert took is not None, daemon.context()
    print(f"DDNS move took effect after {time.monotonic() - moved:.1f} s (TTL {TTL} s)")
    assert "removed 1 [10.30.0.7]" in daemon.log()

    # The DNS server dies: last known addresses stay allowed, and the source says stale.
    dns.stop()
    stale = wait_until(
        lambda: 'repogate_source_stale{source="home"} 1.0' in scrape_metrics(lab), timeout=TTL + 10
    )
    assert stale is not None, daemon.context()
    problems = check_enforcing(
        lab, allowed=[("alice", None), ("bob", BOB_NEIGHBOUR)], refused=[("bob", BOB)]
    )
    assert not problems, "\n".join(problems) + daemon.context()
    assert "source home failed" in daemon.log()
    scraped = scrape_metrics(lab)
    assert 'repogate_source_up{source="home"} 0.0' in scraped
    assert 'repogate_dns_queries_total{result="ok"}' in scraped
