"""The fault suite, devices: a WireGuard interface flapping, an OpenVPN server restart
reassigning addresses, a DHCP lease expiring, the MDM unreachable past `max_stale`.

The continuity loops (tests/e2e/faults.py) run from the devices themselves: from a
tunnel address, or from the address a lease gave, over IPv4 (what the tunnels and the
leases carry here). Through a tunnel the gate's only voice is a reset: a timeout or an
unreachable network while the tunnel is down is the fault itself, not a wrong-state
moment, so the tunnel faults count the approved device refused, and the unapproved
one admitted or not reset at once. Where losing access is the right outcome (a lease
that ran out, an inventory past max_stale) the test states the expected moment and
its bound, and only an attempt that contradicts them is wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lab import loop as lab_loop
from lab import netns
from lab.config import office_group
from lab.dhcp import DnsmasqServer, interface_mac, keep_lease, request_lease
from lab.loop import Attempt, RunningLoop
from lab.mdm import MdmProcess
from lab.openvpn import OpenvpnProcess, make_pki, start_openvpn_client, start_openvpn_server
from lab.probe import REFUSED
from lab.topology import Lab, TargetRef
from lab.wireguard import WG, WireguardProcess, start_wireguard_go
from repogate.state import write_atomically
from tests.e2e.faults import FAST_RESET, FaultRun
from tests.e2e.test_daemon import StartDaemon, check_enforcing, scrape_metrics, wait_until
from tests.e2e.test_daemon import configure as configure_lab
from tests.e2e.test_devices import (
    ALICE_TUNNEL,
    BITBUCKET,
    MALLORY_TUNNEL,
    OVPN_INVENTORY,
    Tunnels,
    write_inventory,
)
from tests.e2e.test_mdm_devices import SECRET, TENANT, intune  # noqa: F401 - the fixture

pytestmark = [pytest.mark.root, pytest.mark.fault]
MAP_INTERVAL = 0.5  # every device group's
BOB_ONLY = ["10.30.0.7"]  # the static group stays, without the loops' clients in it
SSH: list[TargetRef] = [("bitbucket", 22)]
Judge = Callable[[Attempt], bool]
LOOP_DEADLINE = 300.0  # a lease runs 2 minutes: longer than a loop's default life


@dataclass
class DeviceLoops:
    """FaultRun's `start_loop` for devices: a loop runs in the device's namespace, from its
    own address (or the one the kernel picks, for a VPN address that changes), to
    Bitbucket over IPv4."""

    lab: Lab
    namespaces: dict[str, str] = field(default_factory=dict)  # client -> namespace
    sources: dict[str, str] = field(default_factory=dict)  # client -> source address
    running: list[RunningLoop] = field(default_factory=list)

    def __call__(self, client: str, targets: list[TargetRef], **options: Any) -> RunningLoop:
        lab = self.lab
        where = self.namespaces.get(client) or lab.ns(client)
        options.setdefault("deadline", LOOP_DEADLINE)
        started = lab_loop.start_loop(
            netns.in_netns(where, [lab.python]),
            client,
            lab.resolve_targets(targets, {4}),
            workdir=lab.workdir / "loops",
            env=lab.env(),
            source=self.sources.get(client),
            **options,
        )
        self.running.append(started)
        return started


@pytest.fixture
def device_loops(daemon_lab: Lab) -> Iterator[DeviceLoops]:
    loops = DeviceLoops(daemon_lab)
    try:
        yield loops
    finally:
        for running in loops.running:
            running.kill()


def refused_fast(attempt: Attempt) -> bool:
    return attempt.result == REFUSED and attempt.elapsed < FAST_RESET


def through_a_tunnel(run: FaultRun) -> None:
    """Judge by the gate's voice only: alice reset, mallory let in or not reset at once."""
    run.approved_wrong = lambda a: a.result == REFUSED
    run.unapproved_wrong = lambda a: a.connected or (a.result == REFUSED and not refused_fast(a))


def loses_access(lost_at: float, bound: float, regain: tuple[float, float] | None = None) -> Judge:
    """The expectation for a device that should lose access: admitted until `lost_at`,
    refused from `lost_at + bound`; with `regain` (fault cleared at, admitted again by),
    admitted from the second on. In between, either outcome is right."""

    def wrong(a: Attempt) -> bool:
        if a.mono + a.elapsed < lost_at:
            return not a.connected
        if a.mono < lost_at + bound:
            return False
        if regain is None or a.mono < regain[0]:
            return not refused_fast(a)
        return a.mono >= regain[1] and not a.connected

    return wrong


def connected_since(loop: RunningLoop, since: float) -> bool:
    return any(a.connected for a in loop.attempts() if a.mono > since)


def tunnel_down(attempts: list[Attempt]) -> int:
    return sum(1 for a in attempts if a.result != REFUSED and not a.connected)


def devices(lab: Lab) -> dict[str, dict[str, Any]]:
    return {r["device"]: r for r in json.loads(lab.repogate("devices", "--json").stdout)}


def mono(epoch: float) -> float:
    return epoch - time.time() + time.monotonic()


# -- WireGuard ------------------------------------------------------------------------------


def start_wireguard_gate(lab: Lab, start_daemon: StartDaemon, tunnels: Tunnels) -> Any:
    """The vpn group judged by the CSV inventory; alice in, mallory out, through tunnels."""
    write_inventory(tunnels, alice_compliant=True)
    configure_lab(
        lab,
        {
            "inventories": [
                {"name": "it", "type": "file", "path": str(tunnels.inventory), "format": "csv"}
            ],
            "clients": [
                office_group(BOB_ONLY),
                {
                    "name": "vpn",
                    "type": "wireguard",
                    "interface": tunnels.gateway_if,
                    "inventory": "it",
                    "interval": f"{MAP_INTERVAL:g}s",
                },
            ],
        },
    )
    daemon = start_daemon()
    daemon.wait_ready()
    in_and_out = wait_until(lambda: alice_in_mallory_out(lab), 10.0, step=0.3)
    assert in_and_out is not None, daemon.context()
    return daemon


def alice_in_mallory_out(
    lab: Lab, alice: str = ALICE_TUNNEL, mallory: str = MALLORY_TUNNEL
) -> bool:
    return not check_enforcing(
        lab, allowed=[("alice", alice)], refused=[("mallory", mallory)], targets=SSH
    )


def tunnel_run(name: str, device_loops: DeviceLoops) -> FaultRun:
    device_loops.sources.update(alice=ALICE_TUNNEL, mallory=MALLORY_TUNNEL)
    return FaultRun(name, "devices", device_loops)


@pytest.mark.fault_short
def test_a_wireguard_interface_flapping_keeps_alice_in_and_mallory_out(
    daemon_lab: Lab, start_daemon: StartDaemon, tunnels: Tunnels, device_loops: DeviceLoops
) -> None:
    """The gateway's WireGuard link goes down and up 5 times: wireguard-go keeps its
    peers and handshakes, so the map never fails and nothing in the sets changes."""
    lab = daemon_lab
    daemon = start_wireguard_gate(lab, start_daemon, tunnels)
    run = tunnel_run("WireGuard interface flapping (link down and up 5 times)", device_loops)
    through_a_tunnel(run)
    run.inject()
    for _ in range(5):
        netns.run(["ip", "-n", lab.gw, "link", "set", tunnels.gateway_if, "down"])
        time.sleep(0.3)
        netns.run(["ip", "-n", lab.gw, "link", "set", tunnels.gateway_if, "up"])
        time.sleep(0.7)
    run.clear()
    back = wait_until(lambda: connected_since(run.alice, run.cleared or 0.0), 10.0)
    assert back is not None, daemon.context()
    down = tunnel_down(run.alice.attempts() + run.mallory.attempts())
    rows = devices(lab)  # while the daemon runs: `finish` stops it
    result = run.finish(daemon, settle=1.0)
    link_events = daemon.log().count(f"link event: {tunnels.gateway_if} link-up")
    result.status_ok = (
        rows["C02ALICE"]["state"] == "admitted"
        and rows["C02MALLORY"]["state"] == "non-compliant"
        and "source vpn failed" not in daemon.log()
    )
    result.notes.append(
        f"the daemon logged {link_events} link-up events and the map never failed; `devices`: "
        f"C02ALICE {rows['C02ALICE']['state']}, C02MALLORY {rows['C02MALLORY']['state']}; "
        f"{down} attempts timed out while the link was down (the tunnel's, not the gate's)"
    )
    run.check(result, daemon.context())


def test_a_wireguard_interface_deleted_and_recreated_readmits_alice_after_her_handshake(
    daemon_lab: Lab,
    start_daemon: StartDaemon,
    tunnels: Tunnels,
    device_loops: DeviceLoops,
    tmp_path: Path,
) -> None:
    """The gateway's interface is deleted, then recreated from `wg showconf`. Gone: the
    map fails and the group keeps its last known good (alice stays in, status says
    FAILING). Back: no peer has shaken hands, so alice is absent, and refused until the
    first map read after her handshake. The repair window runs from the deletion to one
    map interval + 1 s after the tunnel carries packets again (WireGuard re-handshakes
    by itself ~15 s after the loss: its outage is the fault, not the gate's doing)."""
    lab = daemon_lab
    daemon = start_wireguard_gate(lab, start_daemon, tunnels)
    saved = tmp_path / "wg-saved.conf"
    saved.touch(mode=0o600)
    saved.write_text(lab.exec("gw", [WG, "showconf", tunnels.gateway_if]).stdout)
    run = tunnel_run("WireGuard interface deleted and recreated", device_loops)
    through_a_tunnel(run)
    recreated: list[WireguardProcess] = []
    try:
        run.inject()
        netns.run(["ip", "-n", lab.gw, "link", "del", tunnels.gateway_if])
        failing = wait_until(lambda: "vpn: FAILING" in lab.repogate("status").stdout, 5.0, 0.2)
        gateway = start_wireguard_go(lab.gw, tunnels.gateway_if, tmp_path)
        recreated.append(gateway)
        lab.exec("gw", [WG, "setconf", gateway.ifname, str(saved)])
        netns.run(["ip", "-n", lab.gw, "address", "add", "10.9.0.1/24", "dev", gateway.ifname])
        netns.run(["ip", "-n", lab.gw, "link", "set", gateway.ifname, "up"])
        up = time.monotonic()
        run.clear()
        readmitted = wait_until(lambda: connected_since(run.alice, up), 40.0, step=0.2)
        assert readmitted is not None, daemon.context()
        carried = next(
            a.mono for a in run.alice.attempts() if a.mono > up and a.result != "timeout"
        )
        assert run.injected is not None
        run.result.window = round(carried + MAP_INTERVAL + 1.0 - run.injected, 1)
        alice = run.alice.attempts()
        refused = [a.mono - carried for a in alice if a.mono > up and a.result == REFUSED]
        rows = devices(lab)
        result = run.finish(daemon, settle=1.0)
    finally:
        for process in recreated:
            process.stop()
    alice_now = rows.get("C02ALICE", {}).get("state")
    result.status_ok = failing is not None and alice_now == "admitted"
    said = "never" if failing is None else f"{failing:.1f} s after the deletion"
    result.notes.append(
        f"status said `vpn: FAILING` (serving its last known good) {said}; the tunnel "
        f"carried packets again {carried - up:.1f} s after the recreation (WireGuard's "
        f"re-handshake); alice was then refused {len(refused)} times, within "
        f"{max(refused, default=0.0):.2f} s of it, until the next map read saw her "
        f"handshake (allowed: {MAP_INTERVAL + 1.0:g} s); `devices` then said C02ALICE "
        f"{alice_now}"
    )
    run.check(result, daemon.context())


# -- OpenVPN --------------------------------------------------------------------------------

# The old tun0 going away makes the daemon read the group again at once, and status rows
# written before then admit no one: the new holder of an old address never gets in (the
# test asserts it). Alice's new address is admitted once the restarted server lists it:
# within its status interval (1 s) plus a map read, plus 1 s.
NEW_ADDRESS_WINDOW = 1.0 + MAP_INTERVAL + 1.0


def test_an_openvpn_server_restart_hands_alices_address_to_mallory(
    daemon_lab: Lab, start_daemon: StartDaemon, device_loops: DeviceLoops, tmp_path: Path
) -> None:
    """The server restarts; mallory reconnects first and gets alice's old pool address,
    alice gets mallory's. The old tun0 going away (a link event) makes the daemon read
    the group at once, and rows the server wrote before then admit no one, so mallory is
    never let in at alice's old address; each address follows its new holder once the
    daemon has read the restarted server's status file (alice, refused at her new
    address until then: counted, inside that window)."""
    lab = daemon_lab
    pki = make_pki(tmp_path / "pki", ["alice-laptop", "mallory-laptop"])
    server_address = lab.spec.link("alice").gw_v4
    assert server_address is not None
    inventory = lab.workdir / "devices.csv"
    write_atomically(inventory, OVPN_INVENTORY)

    def connect(name: str) -> tuple[OpenvpnProcess, str]:
        client = start_openvpn_client(
            lab.ns(name), tmp_path, pki, f"{name}-laptop", remote=server_address
        )
        netns.run(["ip", "-n", lab.ns(name), "route", "replace", BITBUCKET, "dev", "tun0"])
        return client, tun_address(lab, name)

    # Without its tunnel a laptop's git traffic goes nowhere (not out of its LAN address).
    unreachable = ["unreachable", BITBUCKET, "metric", "4000"]
    for name in ("alice", "mallory"):
        netns.run(["ip", "-n", lab.ns(name), "route", "add", *unreachable])
    server = start_openvpn_server(lab.gw, tmp_path, pki, local=server_address)
    clients: list[OpenvpnProcess] = []
    try:
        configure_lab(
            lab,
            {
                "inventories": [
                    {"name": "it", "type": "file", "path": str(inventory), "format": "csv"}
                ],
                "clients": [
                    office_group(BOB_ONLY),
                    {
                        "name": "ovpn",
                        "type": "openvpn",
                        "status_file": str(server.status_path),
                        "management": str(server.management),
                        "interface": "tun0",
                        "inventory": "it",
                        "interval": f"{MAP_INTERVAL:g}s",
                    },
                ],
            },
        )
        for name in ("alice", "mallory"):  # in this order: alice gets the pool's first
            clients.append(connect(name)[0])
            server.wait_for_status(lists(f"{name}-laptop"))
        alice_first = tun_address(lab, "alice")
        daemon = start_daemon()
        daemon.wait_ready()
        settled = wait_until(
            lambda: alice_in_mallory_out(lab, alice_first, tun_address(lab, "mallory")), 8.0, 0.3
        )
        assert settled is not None, daemon.context()
        run = FaultRun(
            "OpenVPN server restart handing alice's address to mallory",
            "devices",
            device_loops,
            window=NEW_ADDRESS_WINDOW,
        )
        through_a_tunnel(run)
        run.inject()
        for process in (*clients, server):
            process.stop()
        clients.clear()
        server = start_openvpn_server(lab.gw, tmp_path, pki, local=server_address)
        mallory, mallory_now = connect("mallory")
        clients.append(mallory)
        alice, alice_now = connect("alice")
        clients.append(alice)
        assert mallory_now == alice_first, (mallory_now, alice_first)
        run.clear()
        followed = wait_until(lambda: alice_in_mallory_out(lab, alice_now, mallory_now), 8.0, 0.2)
        assert followed is not None, daemon.context()
        injected = run.injected
        assert injected is not None
        admitted = [a.mono - injected for a in run.mallory.attempts() if a.connected]
        explained = lab.repogate("explain", mallory_now).stdout
        rows = devices(lab)
        result = run.finish(daemon, settle=1.0)
        result.status_ok = (
            "C02MALLORY (mallory) via openvpn mallory-laptop" in explained
            and "non-compliant" in explained
            and rows["C02ALICE"]["state"] == "admitted"
            and alice_now in rows["C02ALICE"]["addresses"]
        )
        exposure = (
            f"from +{min(admitted):.2f} to +{max(admitted):.2f} s after the restart"
            if admitted
            else "never"
        )
        result.notes.append(
            f"mallory, handed alice's old {mallory_now}, was let in {len(admitted)} times, "
            f"{exposure}; alice's new address admitted within {NEW_ADDRESS_WINDOW:g} s; "
            f"then `explain {mallory_now}` named "
            f"C02MALLORY, non-compliant, and `devices` C02ALICE admitted at {alice_now}"
        )
        run.check(result, f"{explained}\n{daemon.context()}")
        assert not admitted, f"mallory got in at alice's old address: {result.notes}"
    finally:
        for process in [*clients, server]:
            process.stop()
        for name in ("alice", "mallory"):
            netns.run(["ip", "-n", lab.ns(name), "route", "del", *unreachable], check=False)
        configure_lab(lab)


def lists(common_name: str) -> Callable[[str], bool]:
    return lambda text: common_name in text


def tun_address(lab: Lab, name: str) -> str:
    shown = netns.run(["ip", "-n", lab.ns(name), "-4", "-o", "address", "show", "tun0"])
    return shown.stdout.split()[3].split("/")[0]


# -- DHCP -----------------------------------------------------------------------------------

LEASE_BOUND = MAP_INTERVAL + 1.0  # a lease past its expiry stops admitting within this
CONNECT_ONCE = """
import socket, sys
try:
    s = socket.create_connection(("198.51.100.10", 22), timeout=2)
    print("connected" if s.recv(64) else "closed")
except OSError as exc:
    print(type(exc).__name__)
"""


@dataclass(frozen=True)
class Lan:
    """An office LAN on a bridge in the gateway, with dnsmasq leasing for 2 minutes."""

    bridge: str
    leases: Path
    namespaces: dict[str, str]  # carol, dave -> namespace
    interfaces: dict[str, str]  # carol, dave -> their interface


@pytest.fixture
def office_lan(daemon_lab: Lab, tmp_path: Path) -> Iterator[Lan]:
    lab = daemon_lab
    bridge = f"{lab.tag}glan"
    spaces = {name: f"{lab.tag}-{name}" for name in ("carol", "dave")}
    interfaces = {name: f"{lab.tag}n{name[:3]}" for name in spaces}
    try:
        netns.run(["ip", "-n", lab.gw, "link", "add", bridge, "type", "bridge"])
        netns.add_address(lab.gw, bridge, "10.77.0.1/24")
        netns.link_up(lab.gw, bridge)
        for name, space in spaces.items():
            netns.add_netns(space)
            port = f"{lab.tag}g{name[:3]}"
            netns.add_veth(lab.gw, port, space, interfaces[name])
            netns.run(["ip", "-n", lab.gw, "link", "set", port, "master", bridge])
            netns.link_up(lab.gw, port)
            netns.link_up(space, interfaces[name])
        # dnsmasq's shortest lease is 2 minutes: it raises anything shorter to that.
        with DnsmasqServer(
            lab.gw, bridge, "10.77.0.50", "10.77.0.60", tmp_path, lease_time="2m"
        ) as dhcp:
            yield Lan(bridge, dhcp.leasefile, spaces, interfaces)
    finally:
        existing = set(netns.list_netns())
        for space in spaces.values():
            if space in existing:
                netns.delete_netns(space)
        netns.run(["ip", "-n", lab.gw, "link", "del", bridge], check=False)
        configure_lab(lab)


def lease_expiry(leases: Path, mac: str) -> float:
    """dnsmasq's `<expiry> <mac> <ip> <hostname> <client-id>` line for `mac`: its expiry."""
    for line in leases.read_text().splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[1] == mac:
            return float(fields[0])
    raise AssertionError(f"no lease for {mac} in {leases}:\n{leases.read_text()}")


def test_a_dhcp_lease_running_out_refuses_its_device_and_a_renewed_one_stays_in(
    daemon_lab: Lab,
    start_daemon: StartDaemon,
    device_loops: DeviceLoops,
    office_lan: Lan,
    tmp_path: Path,
) -> None:
    """dnsmasq leases for 2 minutes. carol's udhcpc stays and renews at half time: she is
    admitted throughout. dave's ran once and quit, and his address stays on his
    interface: from his lease's expiry he is refused within one map interval + 1 s; a
    new lease lets him in again within the same bound."""
    lab, lan = daemon_lab, office_lan
    macs = {
        name: interface_mac(lan.namespaces[name], lan.interfaces[name]) for name in lan.namespaces
    }
    dave = request_lease(lan.namespaces["dave"], lan.interfaces["dave"], tmp_path)
    carol = keep_lease(lan.namespaces["carol"], lan.interfaces["carol"], tmp_path)
    try:
        for space in lan.namespaces.values():
            netns.run(["ip", "-n", space, "route", "replace", "default", "via", "10.77.0.1"])
        inventory = lab.workdir / "devices.csv"
        rows = [f"{name.upper()}1,true,{name},{mac}" for name, mac in macs.items()]
        write_atomically(inventory, "device,compliant,owner,macs\n" + "\n".join(rows) + "\n")
        configure_lab(
            lab,
            {
                "inventories": [
                    {"name": "it", "type": "file", "path": str(inventory), "format": "csv"}
                ],
                "clients": [
                    office_group(BOB_ONLY),
                    {
                        "name": "lan",
                        "type": "dhcp",
                        "leases": str(lan.leases),
                        "inventory": "it",
                        "interfaces": [lan.bridge],
                        "interval": f"{MAP_INTERVAL:g}s",
                    },
                ],
            },
        )
        daemon = start_daemon()
        daemon.wait_ready()

        def reach(name: str) -> str:
            argv = netns.in_netns(lan.namespaces[name], [lab.python, "-c", CONNECT_ONCE])
            return netns.run(argv, check=False, timeout=10).stdout.strip()

        both = wait_until(lambda: reach("carol") == reach("dave") == "connected", 8.0, 0.3)
        assert both is not None, daemon.context()
        expires = lease_expiry(lan.leases, macs["dave"])
        carol_until = lease_expiry(lan.leases, macs["carol"])
        device_loops.namespaces.update(lan.namespaces)
        # dave's loop takes the second slot; `loses_access` below says what is right for it.
        run = FaultRun(
            "DHCP lease running out (another renewed)",
            "devices",
            device_loops,
            clients=("carol", "dave"),
        )
        time.sleep(max(0.0, mono(expires) - time.monotonic()))
        run.inject()
        refused = wait_until(lambda: run.mallory.attempts()[-1].result == REFUSED, 10.0)
        time.sleep(LEASE_BOUND)
        after = devices(lab)
        run.clear()
        request_lease(lan.namespaces["dave"], lan.interfaces["dave"], tmp_path)
        route = ["ip", "-n", lan.namespaces["dave"], "route", "replace", "default"]
        netns.run([*route, "via", "10.77.0.1"])  # udhcpc's deconfig took it with the address
        again = time.monotonic()
        back = wait_until(lambda: connected_since(run.mallory, again), 10.0)
        assert back is not None, daemon.context()
        run.unapproved_wrong = loses_access(
            mono(expires), LEASE_BOUND, regain=(run.cleared or again, again + LEASE_BOUND)
        )
        renewed = lease_expiry(lan.leases, macs["carol"])
        result = run.finish(daemon, settle=1.0)
    finally:
        carol.stop()
    result.status_ok = (
        after["DAVE1"]["state"] == "absent"
        and after["CAROL1"]["state"] == "admitted"
        and renewed > carol_until
    )
    took = "never" if refused is None else f"{refused:.2f} s"
    result.notes.append(
        f"dave ({dave}) refused {took} after his lease's expiry (bound {LEASE_BOUND:g} s), "
        f"`devices` then said DAVE1 {after['DAVE1']['state']}; his new lease let him in "
        f"{back:.2f} s after; carol's renewals (at half the 2-minute lease) moved her expiry "
        f"{renewed - carol_until:.0f} s later and she stayed in (CAROL1 "
        f"{after['CAROL1']['state']})"
    )
    run.check(result, daemon.context())


# -- MDM ------------------------------------------------------------------------------------

MDM_INTERVAL, MDM_TIMEOUT, MAX_STALE = 1.0, 1.0, 4.0
# Past max_stale, two group reads, each up to a map interval plus an MDM timeout: the
# one begun just before (it judges by its start time), and the first after (a device
# group's shrink is never held back).
EXPIRY_BOUND = 2 * (MAP_INTERVAL + MDM_TIMEOUT) + 1.0
RECOVERY_BOUND = MDM_INTERVAL + MDM_TIMEOUT + MAP_INTERVAL + 1.0
BLACKHOLE = "rgtest_mdm_blackhole"


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_mdm_unreachable_past_max_stale_refuses_every_device(
    daemon_lab: Lab,
    start_daemon: StartDaemon,
    tunnels: Tunnels,
    intune: MdmProcess,  # noqa: F811 - the fixture, imported
    device_loops: DeviceLoops,
) -> None:
    """Intune's port is black-holed (every connection times out). Its last good records
    keep deciding until max_stale after the last good read (status FAILING,
    repogate_inventory_up 0); past it every device is refused (fail closed) within
    2 x (map interval + MDM timeout) + 1 s, and status says EXPIRED. Reachable again,
    alice is back within the inventory interval + timeout + map interval + 1 s."""
    lab = daemon_lab
    secret = lab.workdir / "intune.secret"
    write_atomically(secret, SECRET + "\n")
    enrolments = lab.workdir / "enrolments.csv"
    keys = tunnels.keys
    write_atomically(
        enrolments,
        f"device,wireguard\nSERALICE,{keys['alice']}\nSERMALLORY,{keys['mallory']}\n",
    )
    configure_lab(
        lab,
        {
            "inventories": [
                {
                    "name": "intune",
                    "type": "intune",
                    "tenant": TENANT,
                    "client_id": "app",
                    "client_secret_file": str(secret),
                    "authority": f"{intune.base}/login",
                    "graph": f"{intune.base}/graph",
                    "ca_file": str(intune.ca_file),
                    "interval": f"{MDM_INTERVAL:g}s",
                    "timeout": f"{MDM_TIMEOUT:g}s",
                    "max_age": "24h",
                    "max_stale": f"{MAX_STALE:g}s",
                }
            ],
            "enrolments": [{"inventory": "intune", "path": str(enrolments)}],
            "clients": [
                office_group(BOB_ONLY),
                {
                    "name": "vpn",
                    "type": "wireguard",
                    "interface": tunnels.gateway_if,
                    "inventory": "intune",
                    "interval": f"{MAP_INTERVAL:g}s",
                },
            ],
        },
    )
    daemon = start_daemon()
    daemon.wait_ready()
    assert wait_until(lambda: alice_in_mallory_out(lab), 10.0, step=0.3) is not None
    run = tunnel_run("MDM unreachable for longer than max_stale", device_loops)
    port = urlsplit(intune.base).port
    up_metric = 'repogate_inventory_up{inventory="intune",type="intune"}'
    try:
        run.inject()
        lab.nft("add", "table", "inet", BLACKHOLE)
        lab.nft("add", "chain", "inet", BLACKHOLE, "out", "{ type filter hook output priority 0; }")
        lab.nft("add", "rule", "inet", BLACKHOLE, "out", "tcp", "dport", str(port), "drop")
        failing = wait_until(
            lambda: "intune (intune): FAILING since" in lab.repogate("status").stdout, 5.0, 0.2
        )
        scraped = scrape_metrics(lab)
        last_good = metric(
            scraped, 'repogate_inventory_last_success_timestamp_seconds{inventory="intune"}'
        )
        assert failing is not None and last_good is not None, daemon.context()
        expires = mono(last_good + MAX_STALE)
        time.sleep(max(0.0, expires + EXPIRY_BOUND - time.monotonic()))
        said = lab.repogate("status").stdout
        expired_up = metric(scrape_metrics(lab), up_metric)
        alice_row = devices(lab)["SERALICE"]
    finally:
        run.clear()
        lab.nft("delete", "table", "inet", BLACKHOLE, check=False)
    cleared = run.cleared
    assert cleared is not None
    back = wait_until(lambda: connected_since(run.alice, cleared), RECOVERY_BOUND + 5, 0.1)
    assert back is not None, daemon.context()
    recovered = wait_until(lambda: "intune (intune): ok" in lab.repogate("status").stdout, 5.0)
    run.approved_wrong = loses_access(
        expires, EXPIRY_BOUND, regain=(cleared, cleared + RECOVERY_BOUND)
    )
    lost = [a.mono - expires for a in run.alice.attempts() if a.result == REFUSED]
    result = run.finish(daemon, settle=1.0)
    result.status_ok = (
        up_metric + " 0.0" in scraped
        and expired_up == 0.0
        and "intune (intune): EXPIRED since" in said
        and alice_row["state"] == "non-compliant"
        and "past max_stale" in alice_row["reason"]
        and recovered is not None
    )
    result.notes.append(
        f"status said FAILING {failing:.1f} s after the black hole and EXPIRED past max_stale "
        f"({MAX_STALE:g} s); repogate_inventory_up {expired_up}; alice refused from "
        f"{min(lost, default=float('nan')):+.2f} s after the expiry (bound {EXPIRY_BOUND:g} s); "
        f"back {back:.2f} s after the MDM was reachable again (bound {RECOVERY_BOUND:g} s)"
    )
    run.check(result, f"{said}\n{daemon.context()}")
