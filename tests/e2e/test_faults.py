"""The fault suite (`make proof`; `make test` runs the ones marked fault_short).

Each test injects one fault into the real daemon in the lab while the continuity
loops run (tests/e2e/faults.py), and fails on a wrong-state moment outside the
fault's documented repair window, a dead daemon, a status that hides the fault,
or a slow SIGTERM. The results table is docs/reliability.md.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time
from pathlib import Path

import pytest

from lab.config import office_group
from lab.topology import Lab
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import (
    OFFICE_WITHOUT_BOB,
    StartDaemon,
    StartLoop,
    check_enforcing,
    scrape_metrics,
    sync,
    wait_until,
)
from tests.e2e.test_daemon import configure as configure_lab

pytestmark = [pytest.mark.root, pytest.mark.fault]
short = pytest.mark.fault_short
REPAIR_WINDOW = 2.0  # docs: drift by another process is repaired within ~1 s (notifications)
LAPTOPS = 100_000
ALICE_ONLY = "10.20.0.10\n2001:db8:20::10\n"


def alice_in_mallory_out(lab: Lab) -> bool:
    return not check_enforcing(
        lab, allowed=[("alice", None)], refused=[("mallory", None)], targets=[("bitbucket", 22)]
    )


def started(lab: Lab, start_daemon: StartDaemon) -> object:
    sync(lab)
    daemon = start_daemon()
    daemon.wait_ready()
    return daemon


# -- kernel ---------------------------------------------------------------------------------


@short
@pytest.mark.parametrize(
    ("fault", "argv"),
    [
        ("nft flush ruleset", ["flush", "ruleset"]),
        ("the owned table deleted", ["delete", "table", "inet", "repogate"]),
        (
            "a client set flushed by hand",
            ["flush", "set", "inet", "repogate", "client_office_v4_net"],
        ),
        (
            "mallory added to a client set by hand",
            ["add", "element", "inet", "repogate", "client_office_v4_addr", "{ 10.66.0.66 }"],
        ),
    ],
)
def test_kernel_drift_is_repaired_within_its_window(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop, fault: str, argv: list[str]
) -> None:
    lab = daemon_lab
    daemon = started(lab, start_daemon)
    run = FaultRun(fault, "kernel", start_loop, window=REPAIR_WINDOW)
    time.sleep(0.3)
    run.inject()
    lab.nft(*argv)
    repaired = wait_until(lambda: alice_in_mallory_out(lab), 5.0, step=0.1)
    run.clear()
    assert repaired is not None, daemon.context()  # type: ignore[attr-defined]
    result = run.finish(daemon)
    result.status_ok = "drift" in daemon.log()  # type: ignore[attr-defined]
    run.check(result, daemon.context())  # type: ignore[attr-defined]


@short
def test_other_tables_are_byte_identical_through_a_daemons_life(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop
) -> None:
    lab = daemon_lab
    lab.nft("add", "table", "ip", "theirs")
    lab.nft("add", "chain", "ip", "theirs", "post", "{ type nat hook postrouting priority 100; }")
    lab.nft("add", "rule", "ip", "theirs", "post", "oifname", "lo", "masquerade")
    lab.nft("add", "set", "ip", "theirs", "friends", "{ type ipv4_addr; }")
    lab.nft("add", "element", "ip", "theirs", "friends", "{ 192.0.2.1, 192.0.2.2 }")
    before = lab.nft("-j", "list", "table", "ip", "theirs").stdout
    try:
        daemon = started(lab, start_daemon)
        run = FaultRun(
            "other tables byte-identical (start, reload, drift repair, stop)",
            "kernel",
            start_loop,
            window=REPAIR_WINDOW,
        )
        configure_lab(
            lab, {"clients": [office_group(["10.20.0.0/16", "2001:db8:20::/48", "10.30.0.7"])]}
        )
        daemon.reload()  # type: ignore[attr-defined]
        run.inject()
        lab.nft("delete", "table", "inet", "repogate")
        assert wait_until(lambda: alice_in_mallory_out(lab), 5.0, step=0.1) is not None
        run.clear()
        result = run.finish(daemon)
        after = lab.nft("-j", "list", "table", "ip", "theirs").stdout
        result.status_ok = before == after
        run.check(result, f"before: {before}\nafter: {after}")
    finally:
        lab.nft("delete", "table", "ip", "theirs", check=False)
        configure_lab(lab)


# -- process ----------------------------------------------------------------------------------


@short
@pytest.mark.parametrize(
    ("fault", "edit"),
    [
        ("SIGHUP with a TOML syntax error", lambda text: text + "\n[bogus\n"),
        ("SIGHUP with an unknown key", lambda text: text + "\n[agent2]\nx = 1\n"),
        ("SIGHUP with a bad address", lambda text: text.replace("10.20.0.0/16", "10.20.0.300/16")),
        ("SIGHUP with the config deleted", None),
    ],
)
def test_a_bad_reload_keeps_the_running_config(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop, fault: str, edit: object
) -> None:
    lab = daemon_lab
    daemon = started(lab, start_daemon)
    run = FaultRun(fault, "process", start_loop)
    good = lab.config_path.read_text()
    run.inject()
    if edit is None:
        lab.config_path.unlink()
    else:
        lab.config_path.write_text(edit(good))  # type: ignore[operator]
    daemon.send(signal.SIGHUP)  # type: ignore[attr-defined]
    time.sleep(1.0)
    metrics = scrape_metrics(lab)
    lab.config_path.write_text(good)
    run.clear()
    result = run.finish(daemon)
    result.status_ok = "repogate_config_last_reload_successful 0.0" in metrics
    run.check(result, metrics[-2000:])


def test_fifty_sighups_in_a_second(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop
) -> None:
    lab = daemon_lab
    daemon = started(lab, start_daemon)
    run = FaultRun("50 SIGHUPs in a second", "process", start_loop)
    run.inject()
    for _ in range(50):
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]
        time.sleep(0.02)
    run.clear()
    time.sleep(1.0)
    result = run.finish(daemon)
    result.status_ok = "reloaded" in daemon.log()  # type: ignore[attr-defined]
    run.check(result, daemon.context())  # type: ignore[attr-defined]


def laptops(count: int, generation: int) -> str:
    """`count` addresses; generation 0 the even ones, 1 the odd ones: disjoint lists."""
    base = int(ipaddress.ip_address("10.128.0.0")) + generation
    return "\n".join(str(ipaddress.ip_address(base + 2 * n)) for n in range(count)) + "\n"


@pytest.mark.parametrize(
    "delay", [pytest.param(0.6, marks=short), 1.0, 1.4, 1.8, 2.4]
)  # kill points across the first reconcile's read, plan and commit
def test_kill_9_during_a_100000_entry_apply_leaves_old_or_new_and_restart_converges(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop, delay: float
) -> None:
    lab = daemon_lab
    listing = lab.workdir / "laptops.txt"
    listing.write_text(laptops(LAPTOPS, 0))
    group = {"name": "laptops", "type": "file", "path": str(listing)}
    configure_lab(lab, {"clients": [office_group([*OFFICE_WITHOUT_BOB, "10.30.0.7"]), group]})
    try:
        sync(lab)  # the 100,000 are in; now a daemon replaces them all
        listing.write_text(laptops(LAPTOPS, 1))
        name = f"kill -9 {delay:g} s into a 100,000-entry replacement"
        run = FaultRun(name, "process", start_loop)
        daemon = start_daemon()
        run.inject()
        time.sleep(delay)
        daemon.proc.kill()  # type: ignore[attr-defined]
        daemon.proc.wait()  # type: ignore[attr-defined]
        listed = json.loads(
            lab.nft("-j", "list", "set", "inet", "repogate", "client_laptops_v4_addr").stdout
        )
        elements = next(i["set"].get("elem", []) for i in listed["nftables"] if "set" in i)
        # Old or new, never a mix: every element of one generation (its parity).
        generations = {int(ipaddress.ip_address(str(e))) % 2 for e in elements}
        assert len(elements) == LAPTOPS and len(generations) == 1, (len(elements), generations)
        which = "the old list" if generations == {0} else "the new list"
        run.result.notes.append(f"after the kill the set held {which} ({len(elements)} elements)")
        second = start_daemon()
        second.wait_ready(timeout=30)
        converged = wait_until(lambda: alice_in_mallory_out(lab), 10.0, step=0.2)
        run.clear()
        result = run.finish(second)
        result.status_ok = converged is not None
        run.check(result, second.context())
    finally:
        configure_lab(lab)


# -- files --------------------------------------------------------------------------------------


@short
@pytest.mark.parametrize(
    ("fault", "damage"),
    [
        ("file source deleted", lambda p: p.unlink()),
        ("file source replaced by a directory", lambda p: (p.unlink(), p.mkdir())),
        ("file source holding binary garbage", lambda p: p.write_bytes(bytes(range(256)) * 64)),
        (
            "file source of a million lines, none an address",
            lambda p: p.write_text("not-an-address\n" * 1_000_000),
        ),
    ],
)
def test_a_broken_file_source_keeps_its_last_good_entries(
    daemon_lab: Lab, start_daemon: StartDaemon, start_loop: StartLoop, fault: str, damage: object
) -> None:
    lab = daemon_lab
    listing = lab.workdir / "laptops.txt"
    listing.write_text(ALICE_ONLY)  # alice, from a file only
    group = {"name": "laptops", "type": "file", "path": str(listing), "interval": "1s"}
    configure_lab(lab, {"clients": [office_group(["10.30.0.7"]), group]})
    try:
        daemon = started(lab, start_daemon)
        run = FaultRun(fault, "files", start_loop)
        run.inject()
        damage(listing)  # type: ignore[operator]
        statuses: list[str] = []

        def said_so() -> bool:
            statuses.append(lab.repogate("status").stdout)
            return "group laptops: FAILING" in statuses[-1]

        noticed = wait_until(said_so, 20.0, step=0.5)
        status = statuses[-1]
        if noticed is not None:
            run.result.notes.append(f"status said FAILING after {noticed:.1f} s")
        if listing.is_dir():
            listing.rmdir()
        listing.write_text(ALICE_ONLY)
        run.clear()
        result = run.finish(daemon)
        result.status_ok = "group laptops: FAILING" in status
        run.check(result, status)
    finally:
        configure_lab(lab)


def test_fault_results_are_recorded(tmp_path: Path) -> None:
    from tests.e2e import faults

    sample = tmp_path / "r.jsonl"
    sample.write_text(
        json.dumps(faults.asdict(faults.FaultResult("x", "kernel", 10, 2, 0, 2.0))) + "\n"
    )
    assert "| kernel | x | 10 | 2 | yes (2 s) |" in faults.table(sample)
