"""The booted container: its network namespace, its run directory, nspawn itself.

The namespace holds only loopback, as on a gate host without network yet. The
run directory is removed afterwards unless --keep, and never while something
is still mounted under it (removing that would reach into the mount).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .host import HOST_PATH, run_host
from .report import Failed, first_lines

# Commands in the container get this environment, not the caller's.
CONTAINER_ENV = {
    "PATH": HOST_PATH,
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
}

# The one shell snippet: mount a private tmpfs where nspawn keeps its
# propagation directories, then exec nspawn with its arguments ("$@").
NSPAWN_WRAPPER = (
    'mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && exec "$@"'
)


class Container:
    """A booted systemd-nspawn container, driven through nsenter."""

    def __init__(self, root: Path, netns: str, console: Path) -> None:
        self.root = root
        self.netns = netns
        self.console = console
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None

    def boot(self, timeout: float = 120) -> str:
        """Start nspawn and wait for the system to finish booting; returns its state."""
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            NSPAWN_WRAPPER,
            "sh",
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--directory={self.root}",
            f"--machine={self.netns}",
            f"--network-namespace-path=/run/netns/{self.netns}",
            "--capability=CAP_NET_ADMIN",
        ]
        with open(self.console, "w") as console:
            # unshare and sh both exec, so this pid is systemd-nspawn itself.
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        self.init_pid = self._wait_for_init(deadline)
        return self._wait_for_boot(deadline)

    def _alive(self) -> None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise Failed(f"systemd-nspawn exited {self.nspawn.returncode}: {self.console_tail()}")

    def _wait_for_init(self, deadline: float) -> int:
        """The container's PID 1 is nspawn's child (as seen from the host)."""
        assert self.nspawn is not None
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        while time.monotonic() < deadline:
            self._alive()
            try:
                pids = children.read_text().split()
            except OSError:
                pids = []
            # nspawn forks helpers before it execs the container's init: wait for the
            # child that is systemd itself, or nsenter joins a process about to vanish.
            for pid in pids:
                if _comm(int(pid)) == "systemd":
                    return int(pid)
            time.sleep(0.2)
        raise Failed("no container PID 1 appeared")

    def _wait_for_boot(self, deadline: float) -> str:
        state = "unknown"
        while time.monotonic() < deadline:
            self._alive()
            if _comm(self.init_pid or 0) != "systemd":
                self.init_pid = self._wait_for_init(deadline)
            state = self.run("systemctl", "is-system-running", timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        raise Failed(f"system still {state!r} after the boot timeout")

    def run(
        self,
        *argv: str,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the container: all its namespaces, its root and cwd."""
        assert self.init_pid is not None
        return subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--all", "--root", "--wd", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={**CONTAINER_ENV, **(env or {})},
            check=False,  # many checks want the exit status itself
        )

    def must(self, *argv: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
        """run() that raises Failed with the command's output unless it exits 0."""
        result = self.run(*argv, timeout=timeout, env=env)
        if result.returncode != 0:
            raise Failed(
                f"`{' '.join(argv)}` exited {result.returncode}: "
                f"{first_lines(result.stderr + result.stdout, 6)}"
            )
        return result.stdout

    def path(self, inside: str) -> Path:
        """A container path as the host sees it (the root is a plain directory)."""
        return self.root / inside.lstrip("/")

    def console_tail(self, lines: int = 15) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM makes nspawn shut the container down cleanly; SIGKILL if it hangs."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            self.nspawn.wait(30)


@contextmanager
def network_namespace() -> Iterator[str]:
    """A fresh namespace with loopback up and nothing else; always deleted."""
    name = f"rgproof-{secrets.token_hex(4)}"
    run_host(["ip", "netns", "add", name])
    try:
        run_host(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def mounted_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [p for p in points if (p + "/").startswith(prefix)]


@contextmanager
def run_directory(keep: bool) -> Iterator[Path]:
    """The per-run copy lives here; removed unless --keep (never with mounts left)."""
    directory = Path(tempfile.mkdtemp(prefix="repogate-proof.", dir="/var/tmp"))
    try:
        yield directory
    finally:
        if keep:
            print(f"info  kept the run's root: {directory}/root", flush=True)
        elif mounts := mounted_under(directory):
            print(f"info  NOT removing {directory}: still mounted: {mounts}", flush=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)


def _comm(pid: int) -> str:
    """A process's command name, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
