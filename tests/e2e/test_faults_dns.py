"""The fault suite, DNS: alice is approved only by her dynamic-DNS name and Bitbucket is
known only by its names, both served by a real dnsmasq in the lab's `other` namespace,
which then fails (see tests/e2e/faults.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.config import office_group
from lab.dns import DnsServer
from lab.topology import Lab
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import StartDaemon, StartLoop, sync, wait_until
from tests.e2e.test_daemon import configure as configure_lab

pytestmark = [pytest.mark.root, pytest.mark.fault]
DNS_ADDRESS = "203.0.113.10"
ALICE_NAME, GONE_NAME = "alice.lab.test", "laptop-7.lab.test"
HOSTS = {
    ALICE_NAME: ("10.20.0.10", "2001:db8:20::10"),
    GONE_NAME: ("10.77.0.7",),
    "bitbucket.lab.test": ("198.51.100.10", "2001:db8:bb::10"),
}


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


def dns_config(lab: Lab) -> None:
    overrides: dict[str, Any] = {
        "resolver": {"nameservers": [DNS_ADDRESS], "timeout": "1s"},
        "destinations": {
            "bitbucket": {"networks": None, "hosts": ["bitbucket.lab.test"], "min_refresh": "1s"}
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


FAULTS: list[tuple[str, Callable[[DnsServer], None], Callable[[DnsServer], None], str]] = [
    ("DNS server down", lambda d: d.stop(), lambda d: d.start(), "FAILING"),
    ("DNS server silent (black hole)", lambda d: d.pause(), lambda d: d.resume(), "FAILING"),
    (
        "NXDOMAIN for one name of a healthy group",
        lambda d: d.set_hosts({GONE_NAME: []}),
        lambda d: d.set_hosts({GONE_NAME: ["10.77.0.7"]}),
        GONE_NAME,  # status names the name that stopped resolving
    ),
]


@pytest.mark.parametrize("case", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_failing_dns_server_never_changes_who_gets_in(
    daemon_lab: Lab,
    dns: DnsServer,
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    case: tuple[str, Callable[[DnsServer], None], Callable[[DnsServer], None], str],
) -> None:
    fault, damage, repair, said = case
    lab = daemon_lab
    dns_config(lab)
    try:
        sync(lab)
        daemon = start_daemon()
        daemon.wait_ready()
        run = FaultRun(fault, "dns", start_loop)
        run.inject()
        damage(dns)
        noticed = wait_until(lambda: said in lab.repogate("status").stdout, 15.0, step=0.5)
        if noticed is not None:
            run.result.notes.append(f"status said {said!r} after {noticed:.1f} s")
        time.sleep(2.0)  # several refreshes into the fault
        repair(dns)
        run.clear()
        result = run.finish(daemon, settle=2.0)
        result.status_ok = noticed is not None
        run.check(result, daemon.context())
    finally:
        configure_lab(lab)
