"""The fault suite, HTTPS lists: a real TLS server in the lab's `other` namespace serves
the list that alone approves alice, and misbehaves (see tests/e2e/faults.py).

The server is lab.listserver, scripted by files (tests/e2e/test_http_lab.py's fixture).
Where a fault can carry content, it carries a list that admits mallory and drops alice:
a certificate the daemon should refuse, a body over the cap or one that never ends, a
redirect to plain http://. A daemon that skipped a check would let mallory in, and the
loops would count it. Each fault must also be named in status on the group's line, and
the line must say ok again once the fault clears.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.config import office_group
from lab.topology import Lab
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import StartDaemon, StartLoop, sync, wait_until
from tests.e2e.test_daemon import configure as configure_lab
from tests.e2e.test_http_lab import (  # noqa: F401 - the fixture, imported
    PLAIN_PORT,
    PORT,
    SERVER_ADDRESS,
    https_server,
)

pytestmark = [pytest.mark.root, pytest.mark.fault]
ALICE = ["10.20.0.10", "2001:db8:20::10"]
MALLORY = ["10.66.0.66", "2001:db8:66::66"]
OTHERS = [f"10.77.0.{n}" for n in range(1, 19)]  # approved nobody in the lab: list padding
TIMEOUT = 2.0  # the group's per-operation timeout; the whole fetch gets 4 x that
MAX_BYTES = 4096  # the group's size cap in the size faults
# lab.listserver's scripts: deleting them all clears any fault.
SCRIPTS = ("status", "reset", "stall", "trickle", "redirect", "chunked")


def configure(
    lab: Lab,
    root: Path,
    list_format: str = "lines",
    max_bytes: int | None = None,
    interval: float = 1.0,
) -> None:
    group: dict[str, Any] = {
        "name": "laptops",
        "type": "http",
        "url": f"https://{SERVER_ADDRESS}:{PORT}/laptops",
        "ca_file": str(root / "ca.pem"),
        "format": "json" if list_format == "json" else "lines",
        "interval": f"{interval:g}s",
        "timeout": f"{TIMEOUT:g}s",
    }
    if max_bytes is not None:
        group["max_bytes"] = max_bytes
    configure_lab(lab, {"clients": [office_group(["10.30.0.7"]), group]})


def body(addresses: list[str], list_format: str = "lines") -> str:
    return json.dumps(addresses) if list_format == "json" else "\n".join(addresses) + "\n"


def group_line(lab: Lab) -> str:
    """The laptops group's line of `repogate status`."""
    lines = lab.repogate("status").stdout.splitlines()
    return next((line for line in lines if line.strip().startswith("group laptops:")), "")


def status_says(
    lab: Lab, words: tuple[str, ...], *, failing: bool, timeout: float = 10.0
) -> float | None:
    """Seconds until status says one of `words` (on the group's FAILING line if `failing`)."""
    if not failing:
        return wait_until(
            lambda: any(w in lab.repogate("status").stdout for w in words), timeout, step=0.5
        )

    def says() -> bool:
        line = group_line(lab)
        return "FAILING" in line and any(w in line for w in words)

    return wait_until(says, timeout, step=0.5)


def recovered(lab: Lab, timeout: float = 10.0) -> float | None:
    """Seconds until the group's line says ok with nothing rejected."""

    def ok() -> bool:
        line = group_line(lab)
        return ": ok, " in line and "rejected" not in line

    return wait_until(ok, timeout, step=0.3)


def impostor(root: Path) -> None:
    """A list that lets mallory in and leaves alice out: served wherever a check fails."""
    (root / "laptops").write_text(body([*MALLORY, *OTHERS]))


def bad_cert(which: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / "cert").write_text(which)
        impostor(root)

    return damage


def redirect_to_http(root: Path) -> None:
    (root / "plain" / "laptops").write_text(body([*MALLORY, *OTHERS]))
    (root / "redirect").write_text(f"http://{SERVER_ADDRESS}:{PLAIN_PORT}/laptops")


def too_large(chunked: bool) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        padding = [f"# padding line {n:04d} to pass the size cap" for n in range(400)]
        if chunked:
            (root / "chunked").touch()
        (root / "laptops").write_text(body([*MALLORY, *OTHERS, *padding]))

    return damage


def trickle(root: Path) -> None:
    impostor(root)  # its lines first, then a comment line every 0.5 s, never the end
    (root / "trickle").write_text("0.5")


@dataclass(frozen=True)
class Fault:
    name: str
    damage: Callable[[Path], object]
    said: tuple[str, ...]  # what status says (any of)
    list_format: str = "lines"
    failing: bool = True  # said on the group's FAILING line
    max_bytes: int | None = None
    hold: float = 1.0  # seconds the fault stays after status said it
    notice: float = 10.0  # seconds status may take to say it
    interval: float = 1.0  # the group's
    short: bool = False  # make test runs it too (fault_short)


FAULTS = [
    Fault("HTTPS list answers 500", lambda r: (r / "status").write_text("500"), ("HTTP 500",)),
    Fault("HTTPS list answers 404", lambda r: (r / "status").write_text("404"), ("HTTP 404",)),
    Fault(
        "HTTPS list 90 % smaller (alice still on it)",
        lambda r: (r / "laptops").write_text(body(ALICE)),
        ("HELD BACK",),
        failing=False,
        # Held until the next refresh agrees: one interval, long enough to be seen.
        interval=4.0,
    ),
    Fault(
        "HTTPS list holding 0.0.0.0/0 and ::/0",
        lambda r: (r / "laptops").write_text(body([*ALICE, *OTHERS, "0.0.0.0/0", "::/0"])),
        ("rejected",),
        failing=False,
    ),
    Fault(
        "HTTPS JSON list that is not JSON",
        lambda r: (r / "laptops").write_text('{"addresses": [1, 2'),
        ("not valid JSON",),
        list_format="json",
    ),
    Fault(
        "HTTPS list server resets the connection",
        lambda r: (r / "reset").touch(),
        ("closed the connection without answering", "reset by peer"),
    ),
    Fault(
        "HTTPS list server accepts but never answers (timeout)",
        lambda r: (r / "stall").touch(),
        (f"timed out after {TIMEOUT:g} s",),
        hold=2.0,
        notice=15.0,
    ),
    Fault(
        "HTTPS list body trickles forever (whole-fetch deadline)",
        trickle,
        (f"the whole fetch may take at most {4 * TIMEOUT:g} s",),
        hold=2.0,
        notice=4 * TIMEOUT + 10.0,  # the deadline, then up to one interval and a reconcile
    ),
    Fault(
        "HTTPS list over the size cap (Content-Length)",
        too_large(chunked=False),
        (f"body over {MAX_BYTES} bytes (Content-Length",),
        max_bytes=MAX_BYTES,
    ),
    Fault(
        "HTTPS list over the size cap (chunked, no length)",
        too_large(chunked=True),
        (f"body over {MAX_BYTES} bytes (see max_bytes)",),
        max_bytes=MAX_BYTES,
    ),
    Fault(
        "HTTPS list server certificate expired",
        bad_cert("expired"),
        ("certificate verify failed: certificate has expired",),
    ),
    Fault(
        "HTTPS list server certificate from an untrusted CA",
        bad_cert("other-ca"),
        ("certificate verify failed: unable to get local issuer certificate",),
        short=True,
    ),
    Fault(
        "HTTPS list redirected to plain http://",
        redirect_to_http,
        ("plain http:// is refused",),
    ),
]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f, id=f.name, marks=[pytest.mark.fault_short] if f.short else [])
        for f in FAULTS
    ],
)
def test_a_misbehaving_https_list_never_changes_who_gets_in(
    daemon_lab: Lab,
    https_server: Path,  # noqa: F811 - the fixture, imported
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    fault: Fault,
) -> None:
    lab, root = daemon_lab, https_server
    good = body([*ALICE, *OTHERS], fault.list_format)
    (root / "laptops").write_text(good)
    configure(lab, root, fault.list_format, fault.max_bytes, fault.interval)
    try:
        sync(lab)
        daemon = start_daemon()
        daemon.wait_ready()
        run = FaultRun(fault.name, "https", start_loop)
        run.inject()
        fault.damage(root)
        noticed = status_says(lab, fault.said, failing=fault.failing, timeout=fault.notice)
        run.result.notes.append(
            f"status said {fault.said[0]!r} after {noticed:.1f} s"
            if noticed is not None
            else f"status never said {fault.said[0]!r}: {group_line(lab)}"
        )
        time.sleep(fault.hold)
        (root / "laptops").write_text(good)  # the good list first: then the right cert
        for script in (*SCRIPTS, "cert"):
            (root / script).unlink(missing_ok=True)
        run.clear()
        back = recovered(lab)
        run.result.notes.append(
            f"ok again {back:.1f} s after it cleared"
            if back is not None
            else f"not ok after clearing: {group_line(lab)}"
        )
        result = run.finish(daemon, settle=1.0)
        followed = (root / "plain-requests").exists()
        if followed:
            run.result.notes.append("the daemon fetched over plain http://")
        result.status_ok = noticed is not None and back is not None and not followed
        run.check(result, daemon.context())
    finally:
        configure_lab(lab)
