"""A real DHCP exchange between namespaces: dnsmasq serving, busybox udhcpc asking.

Tests of the lease-file address map want leases written by the server that admins
run, not fixtures typed by hand. dnsmasq runs with no config file, no DNS
(`--port=0`) and only the given interface, so it touches nothing outside its
namespace; udhcpc runs once (`-q`), or stays to renew (`keep_lease`), with a tiny script
that puts the address on the interface, the way a laptop would.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError
from lab.netns import in_netns, run

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this with deconfig, bound or renew; $ip and $mask (a prefix length) are set.
# A renewal that keeps the address keeps it on the interface, as a laptop's client does.
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
    renew)
        ip -4 -o addr show dev "$interface" | grep -q " $ip/" || ip addr flush dev "$interface"
        ip addr replace "$ip/$mask" dev "$interface" ;;
esac
exit 0
"""


def missing_tools() -> list[str]:
    """The programs a DHCP lab needs and cannot find (Debian: dnsmasq-base, busybox)."""
    return [tool for tool in ("dnsmasq", "busybox") if shutil.which(tool) is None]


@dataclass
class DnsmasqServer:
    """dnsmasq as a DHCPv4 server on one interface of a namespace; a context manager."""

    netns: str
    interface: str
    first: str  # the range handed out, e.g. 10.77.0.50
    last: str
    workdir: Path
    lease_time: str = "1h"
    leasefile: Path = field(init=False)
    log: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.leasefile = self.workdir / f"{self.interface}.leases"
        self.log = self.workdir / f"dnsmasq-{self.interface}.log"

    def argv(self) -> list[str]:
        return [
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",  # not /etc/dnsmasq.conf: only what is written here
            "--port=0",  # no DNS
            "--user=root",  # the lease file lives in a test's private directory
            "--pid-file=",
            "--log-facility=-",
            "--log-dhcp",
            f"--interface={self.interface}",
            "--bind-interfaces",
            "--dhcp-authoritative",
            f"--dhcp-range={self.first},{self.last},{self.lease_time}",
            f"--dhcp-leasefile={self.leasefile}",
        ]

    def __enter__(self) -> DnsmasqServer:
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                in_netns(self.netns, self.argv()), stdout=handle, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready(10.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "DHCP, IP range" in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise LabError(f"dnsmasq did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def request_lease(
    netns: str, interface: str, workdir: Path, *, hostname: str = "", timeout: float = 30.0
) -> str:
    """Run `busybox udhcpc` once on the interface; return the address it was given.

    `-n` makes udhcpc give up instead of retrying forever, so a broken server fails the
    test with udhcpc's own output rather than a hang.
    """
    argv = ["busybox", "udhcpc", "-i", interface, "-f", "-q", "-n", "-t", "5", "-T", "1"]
    argv += ["-s", str(_script(workdir))]
    if hostname:
        argv += ["-x", f"hostname:{hostname}"]
    proc = run(in_netns(netns, argv), check=False, timeout=timeout)
    if proc.returncode != 0:
        raise LabError(f"udhcpc got no lease on {interface}:\n{proc.stdout}{proc.stderr}")
    address = _address(netns, interface)
    if address is None:
        raise LabError(f"udhcpc reported a lease but {interface} has no address:\n{proc.stdout}")
    return address


@dataclass
class DhcpClient:
    """`busybox udhcpc` left running, as on a laptop: it renews at half the lease time."""

    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def stop(self) -> None:
        """Terminate it without a release (no `-R`): the lease runs out on the server."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)


def keep_lease(netns: str, interface: str, workdir: Path, *, timeout: float = 30.0) -> DhcpClient:
    """Start udhcpc in the foreground on the interface and wait for its first address."""
    log = workdir / f"udhcpc-{interface}.log"
    argv = ["busybox", "udhcpc", "-i", interface, "-f", "-t", "5", "-T", "1"]
    argv += ["-s", str(_script(workdir))]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            in_netns(netns, argv), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        address = _address(netns, interface)
        if address is not None:
            return DhcpClient(process, address, log)
        time.sleep(0.05)
    DhcpClient(process, "", log).stop()
    raise LabError(f"udhcpc got no lease on {interface}:\n{log.read_text(errors='replace')}")


def _script(workdir: Path) -> Path:
    script = workdir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    return script


def _address(netns: str, interface: str) -> str | None:
    shown = run(in_netns(netns, ["ip", "-4", "-o", "addr", "show", "dev", interface])).stdout
    for line in shown.splitlines():
        words = line.split()
        if "inet" in words:
            return words[words.index("inet") + 1].partition("/")[0]
    return None


def interface_mac(netns: str, interface: str) -> str:
    """The interface's MAC as `ip` prints it (lower case, colons)."""
    shown = run(in_netns(netns, ["ip", "-o", "link", "show", "dev", interface])).stdout
    words = shown.split()
    return words[words.index("link/ether") + 1]
