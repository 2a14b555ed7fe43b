"""LAN address maps against the real thing: dnsmasq leases, the kernel's neighbour table.

Two namespaces joined by a veth, nothing else: no traffic leaves them. The code under
test runs inside a namespace as the daemon would run in the host's, by running this
file as a script there (`python test_lan_maps.py neighbours|watch ...`), so pyroute2
opens its sockets in the right namespace on both 0.7 and 0.9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import dhcp, netns

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(
        bool(dhcp.missing_tools()),
        reason=f"needs {' and '.join(dhcp.missing_tools())} (Debian: dnsmasq-base, busybox)",
    ),
]


@dataclass(frozen=True)
class Pair:
    """Namespaces `a` and `b`, joined by veth `a_if` <-> `b_if`, both up."""

    a: str
    b: str
    a_if: str
    b_if: str


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = netns.new_tag()
    made = Pair(f"{tag}-a", f"{tag}-b", f"{tag}a0", f"{tag}b0")
    created: list[str] = []
    try:
        for name in (made.a, made.b):
            netns.add_netns(name)
            created.append(name)
        netns.add_veth(made.a, made.a_if, made.b, made.b_if)
        netns.link_up(made.a, made.a_if)
        netns.link_up(made.b, made.b_if)
        yield made
    finally:
        for name in created:
            netns.delete_netns(name)


def in_namespace(name: str, *argv: str, timeout: float = 30) -> subprocess.Popen[str]:
    env = ["env", f"PYTHONPATH={REPO / 'agent'}:{REPO}"]
    command = netns.in_netns(name, [*env, sys.executable, __file__, *argv])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_dnsmasq_lease_parses_to_the_clients_mac_and_address(pair: Pair, tmp_path: Path) -> None:
    from repogate.sources.devices.leases import read_leases

    netns.add_address(pair.a, pair.a_if, "10.77.0.1/24")
    with dhcp.DnsmasqServer(pair.a, pair.a_if, "10.77.0.50", "10.77.0.60", tmp_path) as server:
        address = dhcp.request_lease(pair.b, pair.b_if, tmp_path, hostname="laptop1")
        mac = dhcp.interface_mac(pair.b, pair.b_if)
        deadline = time.monotonic() + 5
        while mac not in server.leasefile.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = server.leasefile.read_text()
    assert address.startswith("10.77.0.")
    assert f" {mac} {address} laptop1 " in text
    found = read_leases(server.leasefile, lease_format="dnsmasq", now=time.time())
    assert [(s.kind, s.identity, s.addresses) for s in found.sightings] == [
        ("mac", mac, (address,))
    ]
    assert found.sightings[0].detail.startswith("lease until ")
    assert found.rejected == ()
    later = read_leases(server.leasefile, lease_format="dnsmasq", now=time.time() + 3601)
    assert later.sightings == ()
    assert "lease expired at" in later.ignored[0].reason


def address_both(pair: Pair) -> None:
    netns.add_address(pair.a, pair.a_if, "10.78.0.1/24")
    netns.add_address(pair.b, pair.b_if, "10.78.0.2/24")
    netns.add_address(pair.a, pair.a_if, "fd00:78::1/64")
    netns.add_address(pair.b, pair.b_if, "fd00:78::2/64")


def ping(name: str, address: str) -> None:
    netns.run(netns.in_netns(name, ["busybox", "ping", "-c", "1", "-W", "2", address]))


def test_the_neighbour_table_shows_the_peers_mac_and_addresses(pair: Pair) -> None:
    address_both(pair)
    ping(pair.a, "10.78.0.2")
    ping(pair.a, "fd00:78::2")
    proc = in_namespace(pair.a, "neighbours", pair.a_if)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    mac = dhcp.interface_mac(pair.b, pair.b_if)
    found = json.loads(out)
    assert [(s["identity"], s["addresses"], s["interface"]) for s in found] == [
        (mac, ["10.78.0.2", "fd00:78::2"], pair.a_if)
    ]
    assert found[0]["detail"].startswith("neighbour REACHABLE")
    proc = in_namespace(pair.a, "neighbours", "no-such-if")
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, json.loads(out)) == (0, []), err


def test_the_watcher_reports_a_new_neighbour_and_its_deletion_and_closes_fast(
    pair: Pair,
) -> None:
    address_both(pair)
    mac = dhcp.interface_mac(pair.b, pair.b_if)
    watcher = in_namespace(pair.a, "watch", pair.a_if)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready"
        ping(pair.a, "10.78.0.2")
        assert json.loads(watcher.stdout.readline()) == ["present", pair.a_if, "10.78.0.2", mac]
        netns.run(netns.in_netns(pair.a, ["ip", "neigh", "del", "10.78.0.2", "dev", pair.a_if]))
        assert json.loads(watcher.stdout.readline()) == ["gone", pair.a_if, "10.78.0.2", mac]
        assert watcher.stdin is None
        watcher.send_signal(15)  # the script closes the watcher on SIGTERM and times it
        out, err = watcher.communicate(timeout=10)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(timeout=5)
    assert watcher.returncode == 0, err
    closed = json.loads(out)
    assert closed["failed"] is None
    assert closed["close_seconds"] < 1.0


# --- run inside a namespace by the tests above -------------------------------------


def _neighbours(interface: str) -> None:
    from dataclasses import asdict

    from repogate.sources.devices.neighbours import read_neighbours

    found = read_neighbours([interface], now=time.time())
    print(json.dumps([asdict(sighting) for sighting in found.sightings]))


def _watch(interface: str) -> None:
    import signal
    import threading

    from repogate.sources.devices.neighbours import NeighbourEvent, NeighbourWatcher

    def report(event: NeighbourEvent) -> None:
        print(json.dumps([event.kind, event.interface, event.address, event.mac]), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    watcher = NeighbourWatcher([interface], report)
    watcher.start()
    print("ready", flush=True)
    stop.wait(60)
    started = time.monotonic()
    watcher.close()
    elapsed = time.monotonic() - started
    print(json.dumps({"close_seconds": elapsed, "failed": watcher.failed}), flush=True)


if __name__ == "__main__":
    {"neighbours": _neighbours, "watch": _watch}[sys.argv[1]](sys.argv[2])
