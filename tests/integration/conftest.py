"""Root-only fixtures: a fresh network namespace per test, the CLI and nft run inside it."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _skip_reason(tools: tuple[str, ...]) -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run `make test` as root)"
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (Debian packages iproute2, nftables)"
    return None


# For a test module's own `pytestmark` (read there, unlike here): root, ip and nft.
needs_root = pytest.mark.skipif(
    _skip_reason(("ip", "nft")) is not None, reason=_skip_reason(("ip", "nft")) or ""
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark and, without root, skip the tests here that need a network namespace.

    Here rather than with `pytestmark`, which pytest reads from test modules only (in a
    conftest it does nothing, so a run as another user errored in `ip netns add`). A
    conftest's hook sees every collected item, so it keeps to its own directory; tests
    without a namespace (HTTPS and DNS servers on loopback) run as any user.
    """
    for item in items:
        if not item.path.is_relative_to(HERE):
            continue
        uses_netns = isinstance(item, pytest.Function) and "netns" in item.fixturenames
        if uses_netns:
            item.add_marker(pytest.mark.root)
        elif item.get_closest_marker("root") is None:
            continue
        reason = _skip_reason(("ip", "nft") if uses_netns else ())
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Namespace:
    """A throwaway network namespace with helpers to run repogate and nft inside it."""

    name: str
    workdir: Path

    def run(
        self, *argv: str, check: bool = True, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if user:
            prefix += ["setpriv", f"--reuid={user}", "--regid=65534", "--clear-groups"]
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, check=check, timeout=120
        )

    def repogate(
        self, *argv: str, config: Path | None = None, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env_argv = ["env", f"PYTHONPATH={REPO / 'agent'}", sys.executable, "-m", "repogate"]
        extra = ["--config", str(config)] if config else []
        return self.run(*env_argv, *argv, *extra, check=False, user=user)

    def nft(self, *argv: str) -> str:
        return self.run("nft", *argv).stdout

    def write_config(self, body: str, name: str = "repogate.toml") -> Path:
        path = self.workdir / name
        path.write_text(textwrap.dedent(body))
        return path

    def monitor(self) -> Monitor:
        return Monitor(self)


class Monitor:
    """`nft monitor` in the namespace, fenced by sentinel tables so no event is missed."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.output = ns.workdir / f"monitor-{secrets.token_hex(3)}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Monitor:
        self.handle = self.output.open("wb")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, "nft", "monitor"],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )
        self._fence("rgfence_start")
        return self

    def _fence(self, table: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.ns.nft("add", "table", "ip", table)
            self.ns.nft("delete", "table", "ip", table)
            time.sleep(0.05)
            if f"table ip {table}" in self.output.read_text():
                return
        raise AssertionError("nft monitor did not start")

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._fence("rgfence_end")
        finally:
            assert self.process is not None
            self.process.terminate()
            self.process.wait(timeout=5)
            self.handle.close()

    def events(self) -> list[str]:
        """Events between the fences, without the fences and generation lines."""
        lines = self.output.read_text().splitlines()
        starts = [i for i, line in enumerate(lines) if "table ip rgfence_start" in line]
        ends = [i for i, line in enumerate(lines) if "table ip rgfence_end" in line]
        body = lines[starts[-1] + 1 : ends[0] if ends else None]
        return [line.strip() for line in body if line.strip() and not line.startswith("#")]


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Namespace]:
    name = f"rgt{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Namespace(name, tmp_path)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
