"""The fault suite, files: a list the daemon may no longer read, and the address maps
(a dnsmasq leases file, an OpenVPN status file) cut short or rewritten under its feet.

Alice is approved only by the file or map under test (her IPv6 address stays static
for the leases, which carry IPv4 only); mallory appears in every map, held by a device
the inventory calls non-compliant, so a map read wrongly would admit him. The loops
of tests/e2e/faults.py run throughout.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.config import office_group
from lab.topology import Lab
from repogate.state import write_atomically
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import StartDaemon, StartLoop, scrape_metrics, sync, wait_until
from tests.e2e.test_daemon import configure as configure_lab

pytestmark = [pytest.mark.root, pytest.mark.fault]
short = pytest.mark.fault_short
ALICE_ONLY = "10.20.0.10\n2001:db8:20::10\n"
ALICE_V4, ALICE_V6, MALLORY_V4, MALLORY_V6 = (
    "10.20.0.10",
    "2001:db8:20::10",
    "10.66.0.66",
    "2001:db8:66::66",
)
PADDING = 30  # other compliant devices in each map, so a tear has lines to cut
NO_DAC = "-dac_override,-dac_read_search"
CAP_DAC_BITS = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def without_dac_override(lab: Lab) -> list[str]:
    """`repogate run` in the gateway as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH:
    file modes then bind it as they bind the service user (CAP_NET_ADMIN only) in
    production; as full root a mode 000 file would still be readable."""
    drop = ["setpriv", f"--inh-caps={NO_DAC}", f"--bounding-set={NO_DAC}"]
    run = [lab.python, "-m", "repogate", "run", "--config", str(lab.config_path)]
    return netns.in_netns(lab.gw, [*drop, *run])


def effective_caps(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no CapEff for {pid}")


def status_of(lab: Lab) -> str:
    return lab.repogate("status").stdout


# -- a file source the daemon may not read ------------------------------------------------------


@short
def test_an_unreadable_file_source_keeps_its_last_good_entries(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop
) -> None:
    lab = daemon_lab
    listing = lab.workdir / "laptops.txt"
    listing.write_text(ALICE_ONLY)  # alice, from this file only
    listing.chmod(0o644)
    group = {"name": "laptops", "type": "file", "path": str(listing), "interval": "1s"}
    configure_lab(lab, {"clients": [office_group(["10.30.0.7"]), group]})
    try:
        sync(lab)
        daemon = start_daemon(argv=without_dac_override(lab))
        daemon.wait_ready()
        assert effective_caps(daemon.proc.pid) & CAP_DAC_BITS == 0, daemon.context()
        run = FaultRun("file source unreadable (mode 000, no DAC override)", "files", start_loop)
        run.inject()
        listing.chmod(0)
        statuses: list[str] = []

        def said_so() -> bool:
            statuses.append(status_of(lab))
            return "group laptops: FAILING" in statuses[-1]

        noticed = wait_until(said_so, 10.0, step=0.5)
        status = statuses[-1]
        if noticed is not None:
            run.result.notes.append(
                f"status said FAILING (Permission denied) after {noticed:.1f} s"
            )
        time.sleep(1.0)  # more refreshes into the fault
        listing.chmod(0o644)
        run.clear()
        result = run.finish(daemon, settle=1.5)
        result.status_ok = "group laptops: FAILING" in status and "Permission denied" in status
        run.check(result, status + daemon.context())
    finally:
        listing.chmod(0o644)
        configure_lab(lab)


# -- address maps cut short or rewritten while read ---------------------------------------------


def lease_lines(version: int) -> list[str]:
    """dnsmasq's leases file: padding devices, alice and mallory in the middle (where a
    tear lands), more padding; `version` lengthens the host names, moving every line
    after the first as dnsmasq's rewrites do when a lease changes."""
    expiry = int(time.time()) + 3600
    name = "pad" * (1 + version % 4)
    pads = [
        f"{expiry + n} 02:00:00:77:01:{n:02x} 10.77.1.{n + 1} {name}-{n} *" for n in range(PADDING)
    ]
    middle = [
        f"{expiry} 02:00:00:00:0a:10 {ALICE_V4} alice-laptop 01:02:00:00:00:0a:10",
        f"{expiry} 02:00:00:00:66:66 {MALLORY_V4} mallory-laptop *",
    ]
    half = PADDING // 2
    return [*pads[:half], *middle, *pads[half:]]


def lease_inventory() -> str:
    rows = ["device,compliant,owner,macs", "C02ALICE,true,alice,02:00:00:00:0a:10"]
    rows.append("C02MALLORY,false,mallory,02:00:00:00:66:66")
    rows += [f"PAD{n},true,it,02:00:00:77:01:{n:02x}" for n in range(PADDING)]
    return "\n".join(rows) + "\n"


OVPN_TITLE = (
    "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] [AEAD]"
)
OVPN_CLIENTS = (
    "Common Name,Real Address,Virtual Address,Virtual IPv6 Address,Bytes Received,Bytes Sent,"
    "Connected Since,Connected Since (time_t),Username,Client ID,Peer ID,Data Channel Cipher"
)


def status_lines(version: int) -> list[str]:
    """An OpenVPN `status-version 2` file shaped as Debian's 2.6.14 writes it, alice and
    mallory in the middle; `version` grows the byte counters, so each rewrite moves the
    lines after the first client's."""
    now = int(time.time())
    since = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now - 600))},{now - 600}"
    traffic = f"{2039 * 10**version},{2070 * 10**version}"

    def client(name: str, n: int, v4: str, v6: str) -> str:
        real = f"192.0.2.{n % 250 + 2}:{40000 + n}"
        return f"CLIENT_LIST,{name},{real},{v4},{v6},{traffic},{since},UNDEF,{n},{n},AES-256-GCM"

    lines = [f"TITLE,{OVPN_TITLE}", f"TIME,{time.strftime('%Y-%m-%d %H:%M:%S')},{now}"]
    lines += [f"HEADER,CLIENT_LIST,{OVPN_CLIENTS}"]
    pads = [client(f"pad-{n}", n + 2, f"10.77.2.{n + 1}", "") for n in range(PADDING)]
    half = PADDING // 2
    lines += pads[:half]
    lines += [client("alice-laptop", 0, ALICE_V4, ALICE_V6)]
    lines += [client("mallory-laptop", 1, MALLORY_V4, MALLORY_V6)]
    lines += pads[half:]
    lines += [
        "HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,Last Ref (time_t)"
    ]
    lines += [f"ROUTING_TABLE,10.77.2.{n + 1},pad-{n},192.0.2.9:1,{since}" for n in range(PADDING)]
    lines += ["GLOBAL_STATS,Max bcast/mcast queue length,0", "GLOBAL_STATS,dco_enabled,0", "END"]
    return lines


def status_inventory() -> str:
    rows = ["device,compliant,owner,openvpn", "C02ALICE,true,alice,alice-laptop"]
    rows.append("C02MALLORY,false,mallory,mallory-laptop")
    rows += [f"PAD{n},true,it,pad-{n}" for n in range(PADDING)]
    return "\n".join(rows) + "\n"


def text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def cut_mid_line(lines: list[str]) -> str:
    """The file cut in the middle of alice's line: the worst place for a cut."""
    at = next(n for n, line in enumerate(lines) if "alice-laptop" in line)
    return text(lines[:at]) + lines[at][: len(lines[at]) // 2]


class Rewriter:
    """Rewrites a file in place, non-atomically, in a loop, the way its server does.

    dnsmasq: rewind, ftruncate, then its stdio buffer written out (here in three pieces
    cut mid-line). OpenVPN: a write() per line from offset 0, then ftruncate at the end,
    so a reader can find the new head glued to the old tail. The pauses between the
    pieces are longer than the servers' (microseconds), so the daemon's reads land on a
    torn file often instead of by luck; the empty moment after dnsmasq's ftruncate is
    kept as short as dnsmasq's.
    """

    def __init__(self, path: Path, lines: Callable[[int], list[str]], style: str) -> None:
        self.path, self.lines, self.style = path, lines, style
        self.rewrites = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rewrite-{style}", daemon=True)

    def __enter__(self) -> Rewriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_RDWR)
        try:
            while not self._stop.is_set():
                body = text(self.lines(self.rewrites % 4)).encode()
                if self.style == "dnsmasq":
                    self._dnsmasq(fd, body)
                else:
                    self._openvpn(fd, body)
                self.rewrites += 1
        finally:
            os.close(fd)

    def _dnsmasq(self, fd: int, body: bytes) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        third = len(body) // 3
        for start, end in ((0, third), (third, 2 * third), (2 * third, len(body))):
            os.write(fd, body[start:end])
            time.sleep(0.002)

    def _openvpn(self, fd: int, body: bytes) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        for number, line in enumerate(body.splitlines(keepends=True)):
            os.write(fd, line)
            if number % 16 == 15:
                time.sleep(0.001)
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
        time.sleep(0.002)


MapCase = tuple[str, str, str]  # fault name, map ("dhcp" / "openvpn"), damage ("cut" / "rewrite")
MAP_CASES: list[MapCase] = [
    ("DHCP leases file cut short mid-line", "dhcp", "cut"),
    ("DHCP leases file rewritten in place while read", "dhcp", "rewrite"),
    ("OpenVPN status file cut short mid-line", "openvpn", "cut"),
    ("OpenVPN status file rewritten in place while read", "openvpn", "rewrite"),
]


def map_config(lab: Lab, kind: str, path: Path, inventory: Path) -> None:
    group: dict[str, object] = {"name": "lan", "type": kind, "inventory": "it", "interval": "0.5s"}
    group |= {"leases": str(path)} if kind == "dhcp" else {"status_file": str(path)}
    # The leases carry IPv4 only: alice's IPv6 address stays in the static group there.
    static = ["10.30.0.7", ALICE_V6] if kind == "dhcp" else ["10.30.0.7"]
    configure_lab(
        lab,
        {
            "inventories": [
                {"name": "it", "type": "file", "path": str(inventory), "format": "csv"}
            ],
            "clients": [office_group(static), group],
        },
    )


@pytest.fixture
def device_map(daemon_lab: Lab, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    kind = request.param
    path = daemon_lab.workdir / ("leases" if kind == "dhcp" else "openvpn-status.log")
    inventory = daemon_lab.workdir / "devices.csv"
    lines = lease_lines if kind == "dhcp" else status_lines
    write_atomically(inventory, lease_inventory() if kind == "dhcp" else status_inventory())
    write_atomically(path, text(lines(0)), mode=0o644)
    map_config(daemon_lab, kind, path, inventory)
    try:
        yield path, kind
    finally:
        configure_lab(daemon_lab)


@pytest.mark.parametrize(
    ("case", "device_map"),
    [pytest.param(c, c[1], id=c[0]) for c in MAP_CASES],
    indirect=["device_map"],
)
def test_an_address_map_cut_short_or_torn_never_changes_who_gets_in(
    daemon_lab: Lab,
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    case: MapCase,
    device_map: tuple[Path, str],
) -> None:
    fault, kind, damage = case
    lab, (path, _) = daemon_lab, device_map
    lines = lease_lines if kind == "dhcp" else status_lines
    sync(lab)
    daemon = start_daemon()
    daemon.wait_ready()
    assert "group lan: ok" in status_of(lab), status_of(lab) + daemon.context()
    run = FaultRun(fault, "files", start_loop)
    run.inject()
    seen: list[str] = []
    if damage == "cut":
        path.write_text(cut_mid_line(lines(1)))  # in place, as a full disk would leave it
        failing = wait_until(lambda: cut_said(lab, seen), 8.0, step=0.2)
        if failing is not None:
            run.result.notes.append(f"status said FAILING (cut short) after {failing:.1f} s")
        time.sleep(1.0)  # more reads of the cut file
        status_ok = failing is not None
    else:
        before = slow_reads(lab)
        with Rewriter(path, lines, "dnsmasq" if kind == "dhcp" else "openvpn") as rewriter:
            deadline = time.monotonic() + 6.0
            while time.monotonic() < deadline:
                seen += source_lines(lab)
                time.sleep(0.1)
        after = slow_reads(lab)
        whole = f"group lan: ok, {31 if kind == 'dhcp' else 32} entries"
        torn = [s for s in seen if any(w in s for w in TORN_WORDS)]
        wrong = [s for s in seen if not s.startswith(whole) and s not in torn]
        run.result.notes.append(
            f"{rewriter.rewrites} in-place rewrites; {after[0] - before[0]} of "
            f"{after[1] - before[1]} reads took over 50 ms (read again after a tear); "
            f"{len(seen)} status reads: {len(torn)} told of a tear, {len(wrong)} were wrong"
        )
        status_ok = bool(seen) and not wrong  # each read true: the whole file, or a tear
    write_atomically(path, text(lines(0)), mode=0o644)
    run.clear()
    result = run.finish(daemon, settle=1.5)
    result.status_ok = status_ok
    log = daemon.log()
    run.check(result, "\n".join(seen[-3:]) + "\n" + log)
    assert "Traceback" not in log, log


# What status says of a read that met a tear: a rejected line, the read failing, or
# (an empty read, taken for no leases) a shrink held back.
TORN_WORDS = (
    "torn or foreign line",
    "torn rewrite",
    "after END",
    "mid-line",
    "no END line",
    "HELD BACK",
)


def slow_reads(lab: Lab) -> tuple[int, int]:
    """(map reads that took over 50 ms, all map reads) from the daemon's histogram."""
    found = {"slow": 0, "all": 0}
    for line in scrape_metrics(lab).splitlines():
        if line.startswith("repogate_source_refresh_duration_seconds_count") and "lan" in line:
            found["all"] = int(float(line.split()[-1]))
        elif "_bucket" in line and 'le="0.05"' in line and "lan" in line:
            found["slow"] = -int(float(line.split()[-1]))
    return found["slow"] + found["all"], found["all"]


def source_lines(lab: Lab) -> list[str]:
    """`repogate status`'s line for the map's source."""
    return [s.strip() for s in status_of(lab).splitlines() if s.strip().startswith("group lan:")]


def cut_said(lab: Lab, seen: list[str]) -> bool:
    seen += source_lines(lab)
    return bool(seen) and "FAILING" in seen[-1] and ("mid-line" in seen[-1] or "END" in seen[-1])
