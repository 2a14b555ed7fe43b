"""Thin wrappers around iproute2 for network namespaces, veth pairs and commands inside them.

Everything goes through argv lists and `ip` (never a shell), so a namespace or interface name
can never be interpreted as shell syntax, and every call is logged at debug level so a failing
lab can be replayed by hand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from lab.errors import LabError

log = logging.getLogger(__name__)

IP = "ip"
IFNAME_MAX = 15  # IFNAMSIZ - 1: the kernel rejects longer interface names
DEFAULT_TIMEOUT = 30.0

# Every lab namespace is called `rg<6 hex>-<role>`: unique per run, and recognisable by the
# leak check without matching namespaces that belong to anybody else.
TAG_RE = re.compile(r"^rg[0-9a-f]{6}$")
LAB_NETNS_RE = re.compile(r"^rg[0-9a-f]{6}-[a-z0-9]+$")


def new_tag() -> str:
    """Return a fresh per-run prefix such as `rg1a2b3c`."""
    return "rg" + secrets.token_hex(3)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture text output, and raise LabError (with stderr) if check and it failed."""
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout:g}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise LabError(f"exit {proc.returncode}: {' '.join(argv)}\n{detail}")
    return proc


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """Return argv wrapped so it runs inside netns (`ip netns exec` execs, it does not fork)."""
    return [IP, "netns", "exec", netns, *argv]


def list_netns() -> list[str]:
    """Return the names of all named network namespaces (`ip netns list` adds an id suffix)."""
    out = run([IP, "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_netns() -> list[str]:
    """Return the namespaces that look like they were made by a lab (`rg<6 hex>-<role>`)."""
    return [name for name in list_netns() if LAB_NETNS_RE.match(name)]


def add_netns(name: str) -> None:
    """Create a named namespace and bring its loopback up (new namespaces start with lo down)."""
    run([IP, "netns", "add", name])
    run([IP, "-n", name, "link", "set", "lo", "up"])


def netns_pids(name: str) -> list[int]:
    """Return the pids of processes running inside the namespace."""
    proc = run([IP, "netns", "pids", name], check=False)
    return [int(word) for word in proc.stdout.split() if word.isdigit()]


def delete_netns(name: str) -> None:
    """Kill whatever still runs in the namespace, then delete it.

    `ip netns del` only unmounts the name: a process left inside would keep the namespace (and
    its veths and addresses) alive invisibly, so stragglers are killed first. They can only be
    processes this lab started there (servers, probes, repogate).
    """
    for pid in netns_pids(name):
        if pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run([IP, "netns", "del", name])


def sysctl(netns: str, settings: Mapping[str, str]) -> None:
    """Set sysctls inside the namespace (net.* sysctls are per namespace)."""
    run(in_netns(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]))


def add_veth(netns_a: str, ifname_a: str, netns_b: str, ifname_b: str) -> None:
    """Create a veth pair with one end in each namespace.

    Both ends are created directly in their target namespaces, so nothing ever appears in the
    host namespace, even briefly.
    """
    for ifname in (ifname_a, ifname_b):
        if len(ifname) > IFNAME_MAX:
            raise LabError(f"interface name {ifname!r} is longer than {IFNAME_MAX} characters")
    end_a = [ifname_a, "netns", netns_a]
    end_b = ["name", ifname_b, "netns", netns_b]
    run([IP, "link", "add", *end_a, "type", "veth", "peer", *end_b])


def link_up(netns: str, ifname: str) -> None:
    """Bring an interface up."""
    run([IP, "-n", netns, "link", "set", ifname, "up"])


def add_address(netns: str, ifname: str, cidr: str) -> None:
    """Add an address; IPv6 ones with `nodad` so they are usable at once, not tentative."""
    extra = ["nodad"] if ":" in cidr else []
    run([IP, "-n", netns, "address", "add", cidr, "dev", ifname, *extra])


def add_default_route(netns: str, via: str) -> None:
    """Add a default route (IPv4 or IPv6, picked from the gateway address)."""
    family = "-6" if ":" in via else "-4"
    run([IP, "-n", netns, family, "route", "add", "default", "via", via])
