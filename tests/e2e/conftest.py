"""The lab as pytest fixtures: one namespace topology per session, repogate run inside it.

`lab` builds the topology once (about 0.3 s) and, on the way out, checks that cleanup really
left no namespace and no server behind. `bare_lab` hands it over with repogate's table
removed (plain `nft`, so it works even if repogate's teardown is broken); `enforced` has the
default lab config synced by `repogate sync`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from lab import netns
from lab.topology import Lab


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root and network namespaces (run as root, e.g. `make test`)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian packages iproute2, nftables, procps)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unusable here: {probe.stderr.strip()}"
    return None


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here runs in the lab: mark it root, and skip it up front without root.

    A hook rather than `pytestmark`, which pytest ignores in a conftest; it sees every
    collected item, so it keeps to this directory, and probes the host only if needed.
    """
    mine = [item for item in items if item.path.is_relative_to(HERE)]
    reason = _skip_reason() if mine else None
    for item in mine:
        item.add_marker(pytest.mark.root)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def _sigterm_as_interrupt(_signum: int, _frame: FrameType | None) -> None:
    # pytest tears fixtures down on KeyboardInterrupt but simply dies on SIGTERM.
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A running lab for the whole session; fails the session if cleanup leaks anything."""
    reason = _skip_reason()  # again, for a test outside this directory asking for the lab
    if reason is not None:
        pytest.skip(reason)
    before = set(netns.lab_netns())
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        with Lab.create() as the_lab:
            servers = list(the_lab.servers)
            yield the_lab
    finally:
        signal.signal(signal.SIGTERM, previous)
    mine = [name for name in netns.list_netns() if name.startswith(f"{the_lab.tag}-")]
    assert not mine, f"lab cleanup left namespaces: {mine}"
    leaked = set(netns.lab_netns()) - before
    assert not leaked, f"lab namespaces appeared during the session and stayed: {leaked}"
    alive = [s.netns for s in servers if s.proc.poll() is None]
    assert not alive, f"lab servers still running: {alive}"
    assert not the_lab.workdir.exists(), f"lab workdir left behind: {the_lab.workdir}"


@pytest.fixture
def bare_lab(lab: Lab) -> Lab:
    """The lab with the default config written and no repogate table in the gateway."""
    lab.write_config()
    lab.nft("delete", "table", "inet", lab.table, check=False)
    assert lab.nft("list", "table", "inet", lab.table, check=False).returncode != 0
    return lab


@pytest.fixture
def enforced(bare_lab: Lab) -> Lab:
    """The lab with the default config applied from scratch by `repogate sync`."""
    sync = bare_lab.repogate("sync")
    assert sync.returncode == 0, f"repogate sync failed:\n{sync.stdout}\n{sync.stderr}"
    return bare_lab


# The daemon fixtures live beside the daemon's tests; other modules use them too.
from tests.e2e.test_daemon import daemon_lab, start_daemon, start_loop  # noqa: E402, F401
from tests.e2e.test_devices import tunnels  # noqa: E402, F401
