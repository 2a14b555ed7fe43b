"""The unit's privileges and sandbox, rebuilt without systemd, on the real kernel.

As root, in a throwaway network namespace: `repogate sync`, `repogate status` and the
whole life of `repogate run` as nobody with CAP_NET_ADMIN only, no_new_privs, the
kernel's own W^X switch, the unit's UMask and a seccomp filter rebuilt from the unit.
What needs a running systemd (mount namespaces, ordering) is not covered here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .unitfile import QUIET_ENV, REPO, Unit, words

NOBODY = 65534
SETPRIV_NET_ADMIN_ONLY = [
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=-all,+net_admin",
    "--ambient-caps=-all,+net_admin",
    "--bounding-set=-all,+net_admin",
    "--no-new-privs",
]
SETPRIV_NO_CAPS = [
    *SETPRIV_NET_ADMIN_ONLY[:4],
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
]

# Runs as the unprivileged user (no_new_privs already set), then execs its arguments:
# - UMask= of the unit;
# - PR_SET_MDWE (65) with PR_MDWE_REFUSE_EXEC_GAIN (1), Linux 6.3+: the kernel's own
#   MemoryDenyWriteExecute=, inherited across execve;
# - a seccomp filter rebuilt from the unit the way systemd 252 reads it:
#   SystemCallFilter= as an allow list, socket() only for RestrictAddressFamilies=,
#   and MemoryDenyWriteExecute= as systemd implements it (no W+X mmap, no mprotect or
#   pkey_mprotect to PROT_EXEC, no SHM_EXEC). Any other call fails with EPERM, as
#   SystemCallErrorNumber=EPERM makes it, or with "kill" kills the process (SIGSYS),
#   so that a call the unit would deny cannot pass unnoticed.
SANDBOX = textwrap.dedent(
    """
    import ctypes, json, os, sys

    policy = json.load(open(sys.argv[1]))
    os.umask(policy["umask"])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        print("PR_SET_MDWE:", os.strerror(ctypes.get_errno()), file=sys.stderr)
        sys.exit(77)

    class Cmp(ctypes.Structure):  # struct scmp_arg_cmp
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    EQ, MASKED_EQ, W, X, SHM_EXEC = 4, 7, 2, 4, 0o100000
    ALLOW, KILL_PROCESS, EPERM = 0x7FFF0000, 0x80000000, 0x00050000 | 1
    only_when = {
        "socket": [[Cmp(0, EQ, family, 0)] for family in policy["families"]],
        "mmap": [[Cmp(2, MASKED_EQ, W | X, bits)] for bits in (0, W, X)],
        "mprotect": [[Cmp(2, MASKED_EQ, X, 0)]],
        "pkey_mprotect": [[Cmp(2, MASKED_EQ, X, 0)]],
        "shmat": [[Cmp(2, MASKED_EQ, SHM_EXEC, 0)]],
    }
    seccomp = ctypes.CDLL("libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    default = KILL_PROCESS if sys.argv[2] == "kill" else EPERM
    ctx = seccomp.seccomp_init(default)  # native architecture only, as in the unit
    for name in policy["syscalls"]:
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call on this architecture
            continue
        for conditions in only_when.get(name, [[]]):
            array = (Cmp * len(conditions))(*conditions)
            if seccomp.seccomp_rule_add_array(ctx, ALLOW, number, len(conditions), array):
                sys.exit(f"seccomp rule for {name} refused")
    if seccomp.seccomp_load(ctx):
        sys.exit("seccomp_load failed")
    os.execv(sys.argv[3], sys.argv[3:])
    """
)

# What the process really holds, and whether the sandbox is in force in it.
PROBE = textwrap.dedent(
    """
    import ctypes, json, mmap, os, socket
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    keys = ("Uid", "Groups", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    held = {key: status[key].split() for key in keys}
    held["mdwe"] = ctypes.CDLL(None).prctl(66, 0, 0, 0, 0)  # PR_GET_MDWE
    def refused(call, *args):
        try:
            call(*args).close()
        except OSError:
            return True
        return False
    held["wx_refused"] = refused(mmap.mmap, -1, 4096, 0x1, 0x7)  # MAP_SHARED, RWX
    held["packet_refused"] = refused(socket.socket, socket.AF_PACKET, socket.SOCK_RAW)
    held["netlink_refused"] = refused(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW)
    print(json.dumps(held))
    """
)

CONFIG = """\
[agent]
table = "{table}"
state_dir = "{state}"

[destinations.bitbucket]
networks = ["104.192.136.0/21", "2401:1d80:1010::/48"]
ports = [22, 443]

[[clients]]
name = "office"
type = "static"
addresses = ["10.20.0.0/16", "2001:db8:20::/48"]
"""


def syscall_groups() -> dict[str, list[str]]:
    """systemd's @group -> members (names or @groups), as this systemd defines them."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    members: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and not line.strip().startswith("#"):
            members.append(line.strip())
        elif not line.strip():
            members = []
    return groups


def unit_policy(service: dict[str, list[str]]) -> dict[str, object]:
    """System calls and socket families the unit allows (as systemd 252 computes them)."""
    groups = syscall_groups()

    def expand(names: list[str]) -> set[str]:
        found: set[str] = set()
        for name in names:
            found |= expand(groups[name]) if name.startswith("@") else {name}
        return found

    first, *rest = service["SystemCallFilter"]
    assert not first.startswith("~"), "the unit's filter is an allow list"
    allowed = expand(first.split()) | expand(["@default"])  # systemd adds @default
    for value in rest:
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    families = [int(getattr(socket, name)) for name in words(service, "RestrictAddressFamilies")]
    umask = int(service["UMask"][-1], 8)
    return {"syscalls": sorted(allowed), "families": families, "umask": umask}


def _root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and drop to an unprivileged user"
    for tool in ("ip", "nft", "setpriv", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian packages iproute2, nftables, util-linux, systemd)"
    return None


needs_root = pytest.mark.skipif(_root_skip_reason() is not None, reason=_root_skip_reason() or "")


class Sandboxed:
    """A throwaway namespace; commands run in it as nobody with the unit's privileges."""

    def __init__(self, namespace: str, workdir: Path, service: dict[str, list[str]]) -> None:
        self.namespace = namespace
        self.table = f"rgpk_{namespace[4:]}"
        # StateDirectory=: created for the service's user, 0750 as StateDirectoryMode=.
        self.state = workdir / "state"
        self.state.mkdir(mode=0o750)
        os.chown(self.state, NOBODY, NOBODY)
        self.config = workdir / "repogate.toml"
        self.config.write_text(CONFIG.format(table=self.table, state=self.state))
        self.sandbox = workdir / "sandbox.py"
        self.sandbox.write_text(SANDBOX)
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps(unit_policy(service)))
        for path in (self.config, self.sandbox, self.policy):
            path.chmod(0o644)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "agent"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def command(
        self, *argv: str, setpriv: list[str] = SETPRIV_NET_ADMIN_ONLY, denied: str = "kill"
    ) -> list[str]:
        """argv in the namespace as nobody; a denied system call fails with EPERM or kills."""
        wrapper = [sys.executable, str(self.sandbox), str(self.policy), denied]
        if denied == "unsandboxed":
            wrapper = []
        return ["ip", "netns", "exec", self.namespace, *setpriv, *wrapper, *argv]

    def run(
        self, *argv: str, setpriv: list[str] = SETPRIV_NET_ADMIN_ONLY, denied: str = "kill"
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv, setpriv=setpriv, denied=denied),
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=60,
        )

    def repogate_argv(self, verb: str) -> list[str]:
        return [sys.executable, "-m", "repogate", verb, "--config", str(self.config)]

    def repogate(
        self, verb: str, setpriv: list[str] = SETPRIV_NET_ADMIN_ONLY, denied: str = "kill"
    ) -> subprocess.CompletedProcess[str]:
        return self.run(*self.repogate_argv(verb), setpriv=setpriv, denied=denied)

    def nft(self, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, "nft", *argv],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def tables(self) -> str:
        return self.nft("list", "tables")


def kernel_lacks_mdwe() -> str | None:
    """Why PR_SET_MDWE cannot be used here, or None (tried in a child: it cannot be undone)."""
    tried = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ctypes; ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) and exit(1)",
        ],
        check=False,
    )
    return "kernel without PR_SET_MDWE (needs Linux 6.3)" if tried.returncode else None


@pytest.fixture
def sandboxed(unit: Unit) -> Iterator[Sandboxed]:
    missing = kernel_lacks_mdwe()
    if missing:
        pytest.skip(missing)
    namespace = f"rgpk{secrets.token_hex(4)}"
    # Not pytest's tmp_path: that is 0700 under /tmp/pytest-of-root, out of nobody's reach.
    workdir = Path(tempfile.mkdtemp(prefix="repogate-pk-"))
    workdir.chmod(0o755)
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        yield Sandboxed(namespace, workdir, unit["Service"])
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.root
@needs_root
def test_sync_works_as_nobody_with_cap_net_admin_only_inside_the_sandbox(
    sandboxed: Sandboxed,
) -> None:
    probe = sandboxed.run(sys.executable, "-c", PROBE, denied="errno")
    assert probe.returncode == 0, probe.stderr
    held = json.loads(probe.stdout)
    assert held["Uid"] == [str(NOBODY)] * 4
    assert held["Groups"] == []
    cap_net_admin = f"{1 << 12:016x}"
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert held[field] == [cap_net_admin], field
    assert held["NoNewPrivs"] == ["1"]
    assert held["Seccomp"] == ["2"]  # filter mode
    assert held["mdwe"] == 1
    assert held["wx_refused"] and held["packet_refused"]
    assert not held["netlink_refused"]

    # ctypes, libffi and libnftables load and commit under all of that, and no
    # system call outside the unit's filter is made (it would have killed them).
    synced = sandboxed.repogate("sync")
    assert synced.returncode == 0, synced.stderr
    assert f"table inet {sandboxed.table}" in sandboxed.tables()
    status = sandboxed.repogate("status")
    assert status.returncode == 0, status.stderr
    assert "in sync" in status.stdout


@pytest.mark.root
@needs_root
def test_without_cap_net_admin_sync_fails_and_changes_nothing(sandboxed: Sandboxed) -> None:
    result = sandboxed.repogate("sync", setpriv=SETPRIV_NO_CAPS, denied="unsandboxed")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "operation not permitted" in result.stderr.lower()
    assert sandboxed.table not in sandboxed.tables()


@pytest.mark.root
@needs_root
def test_the_daemon_lives_its_whole_life_inside_the_sandbox(sandboxed: Sandboxed) -> None:
    """`repogate run` as the unit runs it: notify, reload on SIGHUP, clean stop on SIGTERM."""
    notify = sandboxed.state.parent / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    notify.chmod(0o777)  # the daemon, as nobody, must be able to send to it
    listener.settimeout(20)
    env = {**sandboxed.env, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1000000"}
    env.pop("JOURNAL_STREAM", None)
    daemon = subprocess.Popen(
        sandboxed.command(*sandboxed.repogate_argv("run")),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []

    def until(field: str) -> None:
        while field not in seen:
            try:
                seen.extend(listener.recv(4096).decode().splitlines())
            except TimeoutError:
                daemon.kill()
                pytest.fail(f"no {field} from the daemon; got {seen}: {daemon.communicate()}")

    try:
        until("READY=1")
        assert f"table inet {sandboxed.table}" in sandboxed.tables()
        config = sandboxed.config.read_text().replace(
            '"10.20.0.0/16"', '"10.20.0.0/16", "10.30.0.7"'
        )
        sandboxed.config.write_text(config)
        seen.clear()
        daemon.send_signal(signal.SIGHUP)
        until("RELOADING=1")
        until("READY=1")
        assert "10.30.0.7" in sandboxed.nft("list", "table", "inet", sandboxed.table)
        until("WATCHDOG=1")
        daemon.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        _, stderr = daemon.communicate(timeout=20)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        listener.close()
    assert daemon.returncode == 0, stderr
    # on_stop = "keep" (the default): the gate stays closed after the daemon stops.
    assert f"table inet {sandboxed.table}" in sandboxed.tables()
    # The state was written by the service user with UMask=0077.
    saved = [path.stat() for path in sandboxed.state.iterdir()]
    assert saved, stderr
    assert all(st.st_uid == NOBODY and st.st_mode & 0o077 == 0 for st in saved)
