"""The fault suite, what the daemon finds when it starts: a state_dir it cannot write (a
read-only mount, a mode the service user cannot write, a full disk), a state file that
is corrupt or not UTF-8, a second daemon already on the table, and an `inet repogate`
table someone else made (with and without a chain called `gate`).

The table is synced before the loops of tests/e2e/faults.py start, so they measure the
gate through the daemon's start (or refusal to start) and the fault.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.config import office_group
from lab.topology import Lab
from repogate.state import write_atomically
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import Daemon, StartDaemon, StartLoop, stateless_table, sync, wait_until
from tests.e2e.test_daemon import configure as configure_lab
from tests.e2e.test_faults_files import status_of, without_dac_override

pytestmark = [pytest.mark.root, pytest.mark.fault]
short = pytest.mark.fault_short
OFFICE = ["10.20.0.0/16", "2001:db8:20::/48", "10.30.0.7"]


# -- a state_dir the daemon cannot write ---------------------------------------------------------


Lift = Callable[[int], None]  # undoes the fault for the daemon (its pid)


def unmount_for(state_dir: Path) -> Lift:
    """`ip netns exec` gave the daemon its own mount namespace, a copy taken at its start,
    and this host's mounts are private: the unmount must happen in there too."""

    def lift(pid: int) -> None:
        subprocess.run(
            ["nsenter", f"--target={pid}", "--mount", "umount", str(state_dir)], check=False
        )

    return lift


@contextlib.contextmanager
def read_only_mount(state_dir: Path) -> Iterator[Lift]:
    subprocess.run(["mount", "--bind", str(state_dir), str(state_dir)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state_dir)], check=True)
        yield unmount_for(state_dir)
    finally:
        subprocess.run(["umount", str(state_dir)], check=True)


@contextlib.contextmanager
def not_writable(state_dir: Path) -> Iterator[Lift]:
    state_dir.chmod(0o555)
    try:
        yield lambda _pid: state_dir.chmod(0o755)
    finally:
        state_dir.chmod(0o755)


@contextlib.contextmanager
def full_disk(state_dir: Path) -> Iterator[Lift]:
    """A 64 KiB tmpfs over state_dir holding its files, then filled to the last byte."""
    saved = {p.name: p.read_bytes() for p in state_dir.iterdir() if p.is_file()}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state_dir)], check=True)
    try:
        for name, data in saved.items():
            (state_dir / name).write_bytes(data)
        with contextlib.suppress(OSError), (state_dir / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        yield unmount_for(state_dir)
    finally:
        subprocess.run(["umount", str(state_dir)], check=True)


Damage = Callable[[Path], contextlib.AbstractContextManager[Lift]]
UNWRITABLE: list[tuple[str, Damage, bool]] = [
    ("state_dir read-only (a read-only mount)", read_only_mount, False),
    ("state_dir not writable (mode 0555, no DAC override)", not_writable, True),
    ("state_dir full (a 64 KiB tmpfs, filled)", full_disk, False),
]


@pytest.mark.parametrize("case", UNWRITABLE, ids=[c[0] for c in UNWRITABLE])
def test_a_state_dir_the_daemon_cannot_write(
    daemon_lab: Lab,
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    case: tuple[str, Damage, bool],
) -> None:
    fault, damage, no_dac = case
    lab = daemon_lab
    listing = lab.workdir / "laptops.txt"
    write_atomically(listing, "10.77.0.1\n", mode=0o644)
    group = {"name": "laptops", "type": "file", "path": str(listing), "interval": "1s"}
    configure_lab(lab, {"clients": [office_group(OFFICE), group]})
    sync(lab)
    before = (lab.state_dir / "state.json").read_bytes()
    run = FaultRun(fault, "process", start_loop)
    try:
        with damage(lab.state_dir) as lift:
            run.inject()
            daemon = start_daemon(argv=without_dac_override(lab) if no_dac else None)
            daemon.wait_ready()
            write_atomically(listing, "10.77.0.1\n10.77.0.2\n", mode=0o644)  # to be saved
            said = wait_until(lambda: unsaved(status_of(lab)), 8.0, step=0.3)
            status = status_of(lab)
            kept = (lab.state_dir / "state.json").read_bytes() == before
            lift(daemon.proc.pid)
            run.clear()
        if said is not None:
            run.result.notes.append(f"status said it cannot save state after {said:.1f} s")
        if kept:
            run.result.notes.append("the state file on disk kept its last whole version")
        # Writable again: the save is retried, and status stops saying it cannot.
        saved = wait_until(lambda: "cannot save" not in status_of(lab), 10.0, step=0.3)
        if saved is not None:
            run.result.notes.append(f"saved again {saved:.1f} s after the fault cleared")
        on_disk = b"10.77.0.2" in (lab.state_dir / "state.json").read_bytes()
        boot = lab.state_dir / "ruleset.nft"  # rewritten every 10 s until it can be
        rewritten = wait_until(lambda: boot.exists() and "10.77.0.2" in boot.read_text(), 12.0)
        assert rewritten is not None and run.cleared is not None, daemon.context()
        after = time.monotonic() - run.cleared
        run.result.notes.append(f"the boot ruleset written again {after:.1f} s after it cleared")
        result = run.finish(daemon, settle=1.0)
        result.status_ok = said is not None and saved is not None and kept and on_disk
        run.check(result, status + daemon.context())
    finally:
        configure_lab(lab)


def unsaved(status: str) -> bool:
    """The new entry enforced, and status saying it could not be saved."""
    return "laptops: 2 entries" in status and "cannot save the state file" in status


# -- a state file that cannot be used --------------------------------------------------------------


BAD_STATE = [
    pytest.param(
        ("state file corrupt (cut short mid-JSON)", b'{"version": 2, "groups": {"office": {"fi'),
        id="corrupt",
    ),
    pytest.param(
        ("state file not UTF-8", b'{"version": 2, "groups": \xff\xfe\x00}'),
        id="not UTF-8",
        marks=short,
    ),
]


@pytest.mark.parametrize("case", BAD_STATE)
def test_an_unusable_state_file_is_set_aside_and_the_gate_holds(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop, case: tuple[str, bytes]
) -> None:
    fault, content = case
    lab = daemon_lab
    sync(lab)
    (lab.state_dir / "state.json").write_bytes(content)
    run = FaultRun(fault, "process", start_loop)
    run.inject()
    daemon = start_daemon()
    daemon.wait_ready()
    aside = list(lab.state_dir.glob("state.json.corrupt-*"))
    status = status_of(lab)
    run.clear()
    result = run.finish(daemon)
    assert len(aside) == 1 and aside[0].read_bytes() == content, aside
    named = aside[0].name in daemon.log() and aside[0].name in status
    result.notes.append(f"set aside as {aside[0].name}, named in the log and in status")
    result.status_ok = named and "state file was unusable" in status
    run.check(result, status + daemon.context())


# -- a second daemon on the table ------------------------------------------------------------------


@short
def test_a_second_daemon_on_the_table_refuses_and_the_first_keeps_enforcing(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop
) -> None:
    lab = daemon_lab
    sync(lab)
    first = start_daemon()
    first.wait_ready()
    run = FaultRun("a second daemon on the same table", "process", start_loop)
    before = stateless_table(lab)
    run.inject()
    second = start_daemon()
    code = second.wait_exit(timeout=10)
    after = stateless_table(lab)
    status = status_of(lab)
    run.clear()
    result = run.finish(first)
    told = "already manages table inet repogate" in second.log()
    result.notes.append(f"the second exited {code}: {second.log().strip().splitlines()[-1]}")
    result.status_ok = code == 1 and told and f"pid {first.proc.pid}" in status
    assert before == after, f"the table changed:\n{before}\n{after}"
    run.check(result, status + second.context())


# -- a foreign table of repogate's name ------------------------------------------------------------

# Someone's own gate, hand-written: alice's networks reach Bitbucket's SSH, nobody else.
FOREIGN = """table inet {table} {{
    chain {chain} {{
        type filter hook forward priority 0; policy accept;
        ip daddr 198.51.100.0/24 tcp dport 22 ip saddr != 10.20.0.0/16 reject with tcp reset
        ip6 daddr 2001:db8:bb::/48 tcp dport 22 ip6 saddr != 2001:db8:20::/48 reject with tcp reset
    }}
}}
"""


@pytest.mark.parametrize("chain", ["gate", "forward"])
def test_a_foreign_table_of_the_same_name_is_never_adopted_nor_touched(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop, chain: str
) -> None:
    lab = daemon_lab
    with_or_without = "with" if chain == "gate" else "without"
    script = lab.workdir / "foreign.nft"
    script.write_text(FOREIGN.format(table=lab.table, chain=chain))
    lab.nft("-f", str(script))
    try:
        before = lab.nft("-s", "list", "ruleset").stdout
        run = FaultRun(
            f"a foreign inet repogate table {with_or_without} a chain called gate",
            "kernel",
            start_loop,
        )
        run.inject()
        codes, logs = [], []
        for _ in range(2):  # started, and started again as systemd's Restart= would
            daemon: Daemon = start_daemon()
            codes.append(daemon.wait_exit(timeout=10))
            logs.append(daemon.log())
        after = lab.nft("-s", "list", "ruleset").stdout
        status = status_of(lab)
        run.clear()
        result = run.finish(None)
        told = all("repogate did not create it (it has no owner mark)" in log for log in logs)
        told = told and all(f"chain {chain}" in log for log in logs)
        told = told and "repogate did not create it" in status  # `repogate status` too
        result.notes.append(
            f"the daemon refused to start (exit {codes}), naming chain {chain}; the loops "
            "measured the foreign table's own gate, byte-identical before and after"
        )
        result.status_ok = codes == [1, 1] and told and before == after
        run.check(result, f"{status}\n{logs[-1]}\nbefore:\n{before}\nafter:\n{after}")
    finally:
        lab.nft("delete", "table", "inet", lab.table, check=False)
