"""The fault suite, the process: SIGTERM while a fetch is in flight, 50 times, never a hang.

Each cycle starts the daemon, makes one kind of source hang on a real server that never
answers (a paused dnsmasq, an HTTPS server holding every request, the MDM stand-in
delaying its devices listing, a stopped wireguard-go) or on a million-line file, waits
until that fetch is under way (the server saw it, or the daemon read the file), and
sends SIGTERM: after READY, in a refresh job; for the sources read before READY, also
during the start's first fetches. The loops of tests/e2e/faults.py run across all 50
starts and stops; between cycles no daemon runs and the table stays in force.
"""

from __future__ import annotations

import functools
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import netns
from lab.config import office_group
from lab.dns import DnsServer
from lab.mdm import MdmProcess, start_mdm_standin, write_state
from lab.topology import Lab
from lab.wireguard import WireguardProcess, start_wireguard_go
from repogate.state import write_atomically
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import Daemon, StartDaemon, StartLoop, sync, wait_until
from tests.e2e.test_daemon import configure as configure_lab

pytestmark = [pytest.mark.root, pytest.mark.fault]
CYCLES = 50
STOP_WITHIN = 5.0
SERVER, HTTPS_PORT = "203.0.113.10", 8444
# Holds every request for ten minutes: far past any timeout, so a fetch stays in flight.
SLOW_HTTPS = r"""
import http.server, sys, time
from pathlib import Path
from lab.https import LabCA
directory, address, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
context = LabCA(directory).server_context((address,))
class Slow(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        with (directory / "requests.log").open("a") as out:
            out.write(self.path + "\n")
        time.sleep(600)
server = http.server.ThreadingHTTPServer((address, port), Slow)
server.daemon_threads = True
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""
TENANT, SECRET = "contoso.onmicrosoft.com", "lab-client-s3cret"


def loops_for(start_loop: StartLoop, seconds: float) -> Callable[..., Any]:
    """FaultRun's loops, told to outlive a long run (their own deadline is 120 s)."""
    return lambda client, targets, **o: start_loop(client, targets, deadline=seconds, **o)


# -- SIGTERM during every kind of in-flight refresh ----------------------------------------------


def listen_queue(lab: Lab, role: str, *argv: str) -> int:
    """Recv-Q of a listening socket: datagrams (UDP) or connections (unix) nobody took."""
    shown = lab.exec(role, ["ss", "-Hln", *argv]).stdout.split()
    return next((int(word) for word in shown if word.isdigit()), 0)  # after Netid, State


@dataclass
class Slow:
    """The servers that never answer, and how each kind of refresh is caught in flight."""

    lab: Lab
    root: Path
    dns: DnsServer
    mdm: MdmProcess
    wireguard: WireguardProcess
    https: subprocess.Popen[str]
    big: Path  # a million lines, none an address: seconds of parsing

    def config(self, kind: str) -> dict[str, Any]:
        pem = str(self.root / "repogate-lab-CA.pem")
        office = office_group(["10.20.0.0/16", "2001:db8:20::/48", "10.30.0.7"])
        nowhere = {"nameservers": ["127.0.0.1"], "port": 1, "timeout": "0.5s"}
        lan = {"name": "lan", "type": "dhcp", "leases": str(self.root / "leases")}
        groups: dict[str, dict[str, Any]] = {
            "file": {"name": "laptops", "type": "file", "path": str(self.root / "list")}
            | {"interval": "1s"},
            "http": {
                "name": "laptops",
                "type": "http",
                "url": f"https://{SERVER}:{HTTPS_PORT}/laptops",
                "ca_file": pem,
                "timeout": "60s",
            },
            "dns": {"name": "home", "type": "dns", "names": ["alice.lab.test"]},
            "inventory": lan | {"inventory": "intune", "interval": "0.5s"},
            "device map": {"name": "vpn", "type": "wireguard"}
            | {"interface": self.wireguard.ifname, "interval": "0.5s"},
        }
        config: dict[str, Any] = {"clients": [office, *filter(None, [groups.get(kind)])]}
        config["resolver"] = (
            {"nameservers": [SERVER], "timeout": "20s"} if kind == "dns" else nowhere
        )
        if kind == "feed":
            feed = {"feed_url": f"https://{SERVER}:{HTTPS_PORT}/feed", "feed_ca_file": pem}
            config["destinations"] = {"mirror": {"preset": "bitbucket", **feed}}
        if kind == "inventory":
            config["inventories"] = [
                {
                    "name": "intune",
                    "type": "intune",
                    "tenant": TENANT,
                    "client_id": "app",
                    "client_secret_file": str(self.root / "secret"),
                    "authority": f"{self.mdm.base}/login",
                    "graph": f"{self.mdm.base}/graph",
                    "ca_file": str(self.mdm.ca_file),
                    "interval": "1s",
                    "timeout": "60s",
                }
            ]
        return config

    def intune(self, *, delay: bool) -> None:
        faults = [{"id": "hold", "vendor": "intune", "kind": "delay", "seconds": 600}]
        state = {
            "credentials": {
                "intune": {"tenant": TENANT, "client_id": "app", "client_secret": SECRET}
            },
            "token_ttl": 3600,
            "intune": [],
            "faults": [dict(f, path_contains="managedDevices") for f in faults] if delay else [],
        }
        write_state(self.mdm.directory, state)

    def hang(self, kind: str) -> Callable[[Daemon], bool]:
        """Make that kind's next fetch slow if needed; return a test that it is under way."""
        lab = self.lab
        if kind in ("http", "feed"):
            log, path = self.root / "requests.log", "/laptops" if kind == "http" else "/feed"
            before = log.read_text().count(path) if log.exists() else 0
            return lambda _: log.exists() and log.read_text().count(path) > before
        if kind == "dns":
            before = listen_queue(lab, "other", "-u", "sport = :53")
            return lambda _: listen_queue(lab, "other", "-u", "sport = :53") > before
        if kind == "device map":
            sock = str(self.wireguard.socket_path)
            before = listen_queue(lab, "gw", "-x", "src", sock)
            self.wireguard.process.proc.send_signal(signal.SIGSTOP)
            return lambda _: listen_queue(lab, "gw", "-x", "src", sock) > before
        if kind == "inventory":
            self.intune(delay=True)
            port = self.mdm.base.rpartition(":")[2]
            query = ["ss", "-Htn", "state", "established", f"( dport = :{port} )"]
            return lambda _: bool(lab.exec("gw", query).stdout.strip())
        shutil.copyfile(self.big, self.root / "list.new")  # file: a new inode to read
        (self.root / "list.new").replace(self.root / "list")
        return lambda _: opened(self.root / "list")

    def describe(self) -> str:
        """The slow servers' side, for a cycle whose fetch never got under way."""
        log = self.root / "requests.log"
        held = log.read_text().split() if log.exists() else []
        sockets = self.lab.exec("other", ["ss", "-tnu"]).stdout
        return f"requests held by the HTTPS server: {held}\nsockets in other:\n{sockets}"

    def after(self, kind: str) -> None:
        """Make the next cycle's start quick again."""
        if kind == "device map":
            self.wireguard.process.proc.send_signal(signal.SIGCONT)
        elif kind == "inventory":
            self.intune(delay=False)
        elif kind == "file":
            write_atomically(self.root / "list", "10.77.0.1\n", mode=0o644)
        elif kind == "dns":  # answers the queued queries (to closed ports): room for more
            self.dns.resume()
            time.sleep(0.2)
            self.dns.pause()


def opened(path: Path) -> bool:
    """Read since it was written (atime moved past mtime, as relatime, the default, keeps
    it): only the daemon reads it, and parsing its million lines then takes seconds."""
    info = path.stat()
    return info.st_atime_ns > info.st_mtime_ns


@pytest.fixture
def slow(daemon_lab: Lab, tmp_path: Path) -> Iterator[Slow]:
    lab, root = daemon_lab, daemon_lab.workdir / "slow"
    root.mkdir(exist_ok=True)
    write_atomically(root / "list", "10.77.0.1\n", mode=0o644)
    (root / "big").write_text("not-an-address\n" * 1_000_000)
    probe = root / "atime"
    probe.write_text("x")
    time.sleep(0.01)
    probe.read_text()
    assert opened(probe), f"{root} does not update atime: the file cycles need it (relatime)"
    write_atomically(
        root / "leases", f"{int(time.time()) + 3600} 02:00:00:77:00:01 10.77.0.2 a *\n"
    )
    write_atomically(root / "secret", SECRET + "\n")
    argv = netns.in_netns(lab.ns("other"), [lab.python, "-c", SLOW_HTTPS, str(root), SERVER])
    https = subprocess.Popen(
        [*argv, str(HTTPS_PORT)], env=lab.env(), stdout=subprocess.PIPE, text=True
    )
    assert https.stdout is not None and https.stdout.readline().strip() == "ready"
    dns = DnsServer(workdir=tmp_path / "dns", netns=lab.ns("other"), address=SERVER, hosts={})
    dns.start()
    dns.pause()
    mdm = start_mdm_standin(lab.gw, tmp_path / "intune", "127.0.0.1", python=lab.python)
    wireguard = start_wireguard_go(lab.gw, f"{lab.tag}wg", tmp_path)
    slow = Slow(lab, root, dns, mdm, wireguard, https, root / "big")
    slow.intune(delay=False)
    try:
        yield slow
    finally:
        wireguard.process.proc.send_signal(signal.SIGCONT)
        for stop in (wireguard.stop, mdm.stop, dns.stop, https.kill):
            stop()
        https.wait()
        configure_lab(lab)


# Each kind's fetch caught in flight after READY (a refresh job) or, for the sources read
# before READY, during the first fetches of the start.
MOMENTS = [
    ("file", "start"),
    ("file", "refresh"),
    ("http", "refresh"),
    ("dns", "refresh"),
    ("feed", "refresh"),
    ("inventory", "start"),
    ("inventory", "refresh"),
    ("device map", "start"),
    ("device map", "refresh"),
]
SAID = {"start": "during the first fetches; no change made", "refresh": "stays in force"}


def test_sigterm_during_every_kind_of_in_flight_refresh_fifty_times(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop, slow: Slow
) -> None:
    lab = daemon_lab
    sync(lab)
    kinds = ", ".join(dict.fromkeys(kind for kind, _ in MOMENTS))
    run = FaultRun(
        f"SIGTERM during an in-flight refresh, {CYCLES} times ({kinds})",
        "process",
        loops_for(start_loop, 600),
    )
    run.inject()
    stops: dict[str, list[float]] = {}
    told = 0
    for cycle in range(CYCLES):
        kind, when = MOMENTS[cycle % len(MOMENTS)]
        configure_lab(lab, slow.config(kind))
        under_way = slow.hang(kind) if when == "start" else None
        daemon = start_daemon()
        if under_way is None:
            daemon.wait_ready()
            under_way = slow.hang(kind)
        what = f"cycle {cycle}: {kind} at {when}"
        caught = wait_until(functools.partial(past_handlers, under_way, daemon), 8.0)
        assert caught is not None, f"{what}: not under way\n{slow.describe()}\n{daemon.context()}"
        sent = time.monotonic()
        daemon.send(signal.SIGTERM)
        code = daemon.wait_exit(timeout=STOP_WITHIN + 5)
        took = time.monotonic() - sent
        stops.setdefault(f"{kind} at {when}", []).append(took)
        slow.after(kind)
        log = daemon.log()
        assert code == 0, f"{what}: exit {code}\n{daemon.context()}"
        assert took < STOP_WITHIN, f"{what}: the stop took {took:.1f} s\n{daemon.context()}"
        if kind == "file":  # still parsing at the stop: its failure was never logged
            assert "source laptops failed" not in log, daemon.context()
        stopping = when == "start" or daemon.notify.find("STOPPING=1") is not None
        told += SAID[when] in log and stopping
    run.clear()
    result = run.finish(None)
    result.stop = round(max(max(s) for s in stops.values()), 3)
    result.notes += [f"{k}: {len(s)} stops, slowest {max(s):.2f} s" for k, s in stops.items()]
    result.notes.append(f"exit 0 every time; the log said what was kept {told} of {CYCLES} times")
    result.status_ok = told == CYCLES
    run.check(result)


def past_handlers(under_way: Callable[[Daemon], bool], daemon: Daemon) -> bool:
    """Under way, and the daemon past installing its signal handlers (it logs where its
    metrics listen just before the first fetches)."""
    return "metrics on" in daemon.log() and under_way(daemon)
