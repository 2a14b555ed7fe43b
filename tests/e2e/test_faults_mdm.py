"""The fault suite, MDM connectors: an Intune stand-in (lab.mdm) misbehaves while it alone
decides who reaches Bitbucket (see tests/e2e/faults.py).

The continuity loops run from alice's and mallory's own addresses, IPv4 and IPv6, and the
inventory judges them: a `neighbours` group on the gateway's links to them maps each
address to the MAC the kernel sees there, an enrolment map joins each MAC to its Intune
serial, and Intune's record decides. alice's laptop is compliant; mallory's is listed
twice (re-enrolled): an old compliant record and the current non-compliant one, newest
wins. With one device per page the listing is three pages, mallory's old record first,
so a daemon that judged by a partial listing would let mallory in and shut alice out,
and the loops would count it. Faults: the access token revoked mid-run and then short-
lived (renewed, never failing), 429 with a long and a short Retry-After (honoured:
asked again no sooner), and a page of the listing answering 404 or 500 (the whole read
fails; the last good records keep deciding).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.config import office_group
from lab.dhcp import interface_mac
from lab.mdm import MdmProcess, MdmRequest, start_mdm_standin, write_state
from lab.topology import Lab
from repogate.state import write_atomically
from tests.e2e.faults import TARGETS, FaultResult, FaultRun
from tests.e2e.test_daemon import Daemon, StartDaemon, StartLoop, check_enforcing, wait_until
from tests.e2e.test_daemon import configure as configure_lab
from tests.e2e.test_mdm_devices import SECRET, TENANT, device

pytestmark = [pytest.mark.root, pytest.mark.fault]
INTERVAL = 1.0  # the inventory's
LISTING = "managedDevices"  # in every Graph request but the token's
SEEN = "intune (intune):"  # the inventory's line in status
SHORT = (("alice", "alic"), ("mallory", "mall"))  # lab.spec's link names
NC = "non-compliant"


def intune_state(faults: list[dict[str, Any]] | None = None, token_ttl: int = 3600) -> Any:
    now = time.time()
    return {
        "credentials": {"intune": {"tenant": TENANT, "client_id": "app", "client_secret": SECRET}},
        "token_ttl": token_ttl,
        "page_size": {"intune": 1},  # three pages: nextLink followed twice
        "intune": [
            {**device("SERMALLORY", "mallory", "compliant", now - 7200), "id": "guid-old"},
            device("SERALICE", "alice", "compliant", now - 300),
            device("SERMALLORY", "mallory", "noncompliant", now - 300),
        ],
        "faults": faults or [],
    }


@dataclass
class Setup:
    lab: Lab
    intune: MdmProcess

    def write(self, faults: list[dict[str, Any]] | None = None, token_ttl: int = 3600) -> None:
        write_state(self.intune.directory, intune_state(faults, token_ttl))

    def requests(self, after: float) -> list[MdmRequest]:
        return [r for r in self.intune.requests("intune") if r.mono >= after]

    def line(self) -> str:
        lines = self.lab.repogate("status").stdout.splitlines()
        return next((line.strip() for line in lines if line.strip().startswith(SEEN)), "")

    def verdicts(self) -> dict[str, str]:
        rows = json.loads(self.lab.repogate("devices", "--json").stdout or "[]")
        return {row["device"]: row["state"] for row in rows}


@pytest.fixture
def lan_intune(daemon_lab: Lab, tmp_path: Path) -> Iterator[Setup]:
    """Intune in the gateway, judging alice's and mallory's own links through their MACs."""
    lab = daemon_lab
    directory = tmp_path / "intune"
    directory.mkdir()
    write_state(directory, intune_state())
    intune = start_mdm_standin(lab.gw, directory, "127.0.0.1", python=lab.python)
    try:
        secret = lab.workdir / "intune.secret"
        write_atomically(secret, SECRET + "\n")
        macs = {who: interface_mac(lab.ns(who), f"{lab.tag}n{short}") for who, short in SHORT}
        enrolments = lab.workdir / "enrolments.csv"
        write_atomically(
            enrolments, f"device,macs\nSERALICE,{macs['alice']}\nSERMALLORY,{macs['mallory']}\n"
        )
        inventory = {
            "name": "intune",
            "type": "intune",
            "tenant": TENANT,
            "client_id": "app",
            "client_secret_file": str(secret),
            "authority": f"{intune.base}/login",
            "graph": f"{intune.base}/graph",
            "ca_file": str(intune.ca_file),
            "interval": f"{INTERVAL:g}s",
            "timeout": "2s",
            "max_age": "24h",
        }
        lan = {
            "name": "lan",
            "type": "neighbours",
            "inventory": "intune",
            "interfaces": [f"{lab.tag}g{short}" for _, short in SHORT],
            "interval": "0.5s",
        }
        configure_lab(
            lab,
            {
                "inventories": [inventory],
                "enrolments": [{"inventory": "intune", "path": str(enrolments)}],
                "clients": [office_group(["10.30.0.7"]), lan],  # bob's: alice is not in it
            },
        )
        yield Setup(lab, intune)
    finally:
        intune.stop()
        configure_lab(lab)


def start(
    setup: Setup, start_daemon: StartDaemon, start_loop: StartLoop, name: str
) -> tuple[Daemon, FaultRun]:
    """The daemon, judging both by Intune; then the loops. Returns (daemon, run)."""
    lab = setup.lab
    daemon = start_daemon()
    daemon.wait_ready()

    def judged() -> bool:  # the first packets fill the gateway's neighbour table
        both = check_enforcing(
            lab, allowed=[("alice", None)], refused=[("mallory", None)], targets=TARGETS
        )
        return not both and setup.verdicts() == {"SERALICE": "admitted", "SERMALLORY": NC}

    assert wait_until(judged, 20.0, step=0.3) is not None, daemon.context()
    assert SEEN + " ok" in lab.repogate("status").stdout, daemon.context()
    return daemon, FaultRun(name, "mdm", start_loop)


def watch(setup: Setup, seconds: float) -> list[str]:
    """Sample the inventory's status line for `seconds`; the lines that said FAILING."""
    failing: list[str] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        line = setup.line()
        if "FAILING" in line or "EXPIRED" in line or not line:
            failing.append(line or "no inventory line")
        time.sleep(0.2)
    return failing


def recover(setup: Setup, run: FaultRun) -> bool:
    setup.write()
    run.clear()
    back = wait_until(lambda: setup.line().startswith(SEEN + " ok"), 10.0, step=0.3)
    run.result.notes.append(
        f"ok again {back:.1f} s after it cleared" if back is not None else "never ok again"
    )
    return back is not None


def finish(run: FaultRun, daemon: Daemon, status_ok: bool) -> FaultResult:
    result = run.finish(daemon, settle=1.0)
    result.status_ok = status_ok
    run.check(result, daemon.context())
    return result


def test_intune_token_revoked_then_short_lived_is_renewed_without_failing(
    lan_intune: Setup, start_daemon: StartDaemon, start_loop: StartLoop
) -> None:
    setup = lan_intune
    daemon, run = start(setup, start_daemon, start_loop, "Intune access token expires mid-run")
    run.inject()
    since = time.monotonic()
    # Every token issued so far is revoked at the next listing request, and new ones live 3 s.
    revoke = {"id": "revoke", "vendor": "intune", "kind": "expire_tokens", "path_contains": LISTING}
    setup.write([revoke], token_ttl=3)
    failing = watch(setup, 7.0)
    seen = setup.requests(since)
    refused = [r for r in seen if r.status == 401 and LISTING in r.path]
    tokens = [r for r in seen if r.path.endswith("/token") and r.status == 200]
    listed = [r for r in seen if LISTING in r.path and r.status == 200]
    run.result.notes.append(
        f"{len(refused)} listing refused with 401 (revoked token), {len(tokens)} tokens issued "
        f"in 7 s, {len(listed)} pages answered; status said FAILING {len(failing)} times"
    )
    recovered = recover(setup, run)
    kept = setup.verdicts() == {"SERALICE": "admitted", "SERMALLORY": NC}
    ok = not failing and refused and len(tokens) >= 3 and len(listed) >= 6
    finish(run, daemon, bool(ok) and recovered and kept)


@pytest.mark.parametrize("retry_after", [7.0, 1.0], ids=["long", "short"])
def test_intune_429_with_retry_after_is_honoured(
    lan_intune: Setup, start_daemon: StartDaemon, start_loop: StartLoop, retry_after: float
) -> None:
    setup = lan_intune
    name = f"Intune answers 429 with Retry-After {retry_after:g} s"
    daemon, run = start(setup, start_daemon, start_loop, name)
    run.inject()
    since = time.monotonic()
    limit: dict[str, Any] = {"id": "429", "vendor": "intune", "kind": "rate_limit"}
    limit |= {"path_contains": LISTING}
    limit |= {"retry_after": retry_after}
    # The long one persists; the short one answers twice, each waited out within a read.
    setup.write([limit if retry_after > 5 else {**limit, "count": 2}])
    failing = watch(setup, 11.0 if retry_after > 5 else 5.0)
    listings = [r for r in setup.requests(since) if LISTING in r.path]
    throttled = [r for r in listings if r.status == 429]
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(listings)]
    after_429 = [g for r, g in zip(listings, gaps, strict=False) if r.status == 429]
    run.result.notes.append(
        f"{len(throttled)} answered 429; asked again after "
        f"{', '.join(f'{g:.1f}' for g in after_429) or 'never'} s; "
        + (f"status said FAILING ({_reason(failing[0])})" if failing else "never FAILING")
    )
    recovered = recover(setup, run)
    # The daemon counts a long Retry-After from the start of its read (a few ms before
    # the 429 here), so a little slack; a client that ignored it would ask after 1 s.
    slack = 0.5 if retry_after > 5 else 0.05
    honoured = bool(after_429) and min(after_429) >= retry_after - slack
    if retry_after > 5:  # past SHORT_WAIT: the read fails, saying how long it waits
        said = bool(failing) and all(f"asked to wait {retry_after:g} s" in f for f in failing)
        ok = len(throttled) >= 2 and said
    else:  # waited out inside the read: never failing
        ok = len(throttled) == 2 and not failing
    finish(run, daemon, ok and honoured and recovered)


@pytest.mark.parametrize("status", [404, pytest.param(500, marks=pytest.mark.fault_short)])
def test_intune_listing_with_a_page_missing_fails_whole(
    lan_intune: Setup, start_daemon: StartDaemon, start_loop: StartLoop, status: int
) -> None:
    setup = lan_intune
    name = f"Intune listing page 2 of 3 answers {status}"
    daemon, run = start(setup, start_daemon, start_loop, name)
    run.inject()
    since = time.monotonic()
    kind = {"kind": "not_found"} if status == 404 else {"kind": "status", "status": status}
    # Only the pages after the first carry a $skiptoken: page 1 keeps answering.
    setup.write([{"id": "page", "vendor": "intune", "path_contains": "$skiptoken", **kind}])
    said = wait_until(lambda: _failing_with(setup.line(), f"HTTP {status}"), 8.0, step=0.3)
    verdicts = setup.verdicts()
    time.sleep(2.0)
    missing = [r for r in setup.requests(since) if r.fault == "page"]
    firsts = [r for r in setup.requests(since) if LISTING in r.path and r.status == 200]
    run.result.notes.append(
        (f"status said FAILING (HTTP {status}) after {said:.1f} s" if said else "never FAILING")
        + f"; {len(missing)} page 2 answers {status}, page 1 answered {len(firsts)} times; "
        f"devices meanwhile: {verdicts}"
    )
    recovered = recover(setup, run)
    kept = verdicts == {"SERALICE": "admitted", "SERMALLORY": NC}
    finish(run, daemon, said is not None and kept and bool(missing) and recovered)


def _failing_with(line: str, words: str) -> bool:
    return "FAILING" in line and words in line


def _reason(line: str) -> str:
    """The end of a FAILING line's reason: '...; asked to wait 7 s'."""
    reason = line.partition(" (")[2].partition("); judging")[0]
    return reason.rpartition("; ")[2] or reason[-60:]
