"""The fault suite, HTTPS lists: a real TLS server in the lab's `other` namespace serves
the list that alone approves alice, and misbehaves (see tests/e2e/faults.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.config import office_group
from lab.topology import Lab
from tests.e2e.faults import FaultRun
from tests.e2e.test_daemon import StartDaemon, StartLoop, sync, wait_until
from tests.e2e.test_daemon import configure as configure_lab
from tests.e2e.test_http_lab import PORT, SERVER_ADDRESS, https_server  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.fault]
ALICE = ["10.20.0.10", "2001:db8:20::10"]
OTHERS = [f"10.77.0.{n}" for n in range(1, 19)]  # approved nobody in the lab: list padding


def configure(lab: Lab, root: Path, list_format: str = "lines") -> None:
    group = {
        "name": "laptops",
        "type": "http",
        "url": f"https://{SERVER_ADDRESS}:{PORT}/laptops",
        "ca_file": str(root / "ca.pem"),
        "format": "json" if list_format == "json" else "lines",
        "interval": "1s",
        "timeout": "2s",
    }
    configure_lab(lab, {"clients": [office_group(["10.30.0.7"]), group]})


def body(addresses: list[str], list_format: str = "lines") -> str:
    return json.dumps(addresses) if list_format == "json" else "\n".join(addresses) + "\n"


def status_says(lab: Lab, words: tuple[str, ...], timeout: float = 10.0) -> float | None:
    return wait_until(
        lambda: any(w in lab.repogate("status").stdout for w in words), timeout, step=0.5
    )


FAULTS: list[tuple[str, str, Callable[[Path], None], tuple[str, ...]]] = [
    ("HTTPS list answers 500", "lines", lambda r: (r / "status").write_text("500"), ("HTTP 500",)),
    ("HTTPS list answers 404", "lines", lambda r: (r / "status").write_text("404"), ("HTTP 404",)),
    (
        "HTTPS list 90 % smaller (alice still on it)",
        "lines",
        lambda r: (r / "laptops").write_text(body(ALICE)),
        ("HELD BACK",),
    ),
    (
        "HTTPS list holding 0.0.0.0/0 and ::/0",
        "lines",
        lambda r: (r / "laptops").write_text(body([*ALICE, *OTHERS, "0.0.0.0/0", "::/0"])),
        ("rejected",),
    ),
    (
        "HTTPS JSON list that is not JSON",
        "json",
        lambda r: (r / "laptops").write_text('{"addresses": [1, 2'),
        ("not valid JSON",),
    ),
]


@pytest.mark.parametrize("case", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_misbehaving_https_list_never_changes_who_gets_in(
    daemon_lab: Lab,
    https_server: Path,  # noqa: F811 - the fixture, imported
    start_daemon: StartDaemon,
    start_loop: StartLoop,
    case: tuple[str, str, Callable[[Path], None], tuple[str, ...]],
) -> None:
    fault, list_format, damage, said = case
    lab, root = daemon_lab, https_server
    (root / "laptops").write_text(body([*ALICE, *OTHERS], list_format))
    configure(lab, root, list_format)
    try:
        sync(lab)
        daemon = start_daemon()
        daemon.wait_ready()
        run = FaultRun(fault, "https", start_loop)
        run.inject()
        damage(root)
        noticed = status_says(lab, said)
        if noticed is not None:
            run.result.notes.append(f"status said {said[0]!r} after {noticed:.1f} s")
        time.sleep(1.0)
        (root / "status").unlink(missing_ok=True)
        (root / "laptops").write_text(body([*ALICE, *OTHERS], list_format))
        run.clear()
        result = run.finish(daemon, settle=1.5)
        result.status_ok = noticed is not None
        run.check(result, daemon.context())
    finally:
        configure_lab(lab)
