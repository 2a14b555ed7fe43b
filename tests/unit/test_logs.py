"""logs: journald files each line at its priority, and libraries' noise stays out."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from repogate.logs import QUIETED, journal_priority, setup_logging

JOURNAL = {"JOURNAL_STREAM": "8:123"}


@pytest.fixture
def journal() -> Iterator[io.StringIO]:
    """setup_logging as under systemd, into a string; the root logger restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quieted = {name: logging.getLogger(name).level for name in QUIETED}
    stream = io.StringIO()
    setup_logging("text", stream, environ=JOURNAL)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in quieted.items():
            logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.ERROR + 5, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.INFO + 5, 6),
        (logging.DEBUG, 7),
    ],
)
def test_journal_priorities(level: int, priority: int) -> None:
    assert journal_priority(level) == priority


def test_an_error_goes_out_at_priority_3(journal: io.StringIO) -> None:
    logging.getLogger("repogate.daemon").error("cannot use nftables: no CAP_NET_ADMIN")
    assert journal.getvalue() == "<3>error: cannot use nftables: no CAP_NET_ADMIN\n"


def test_every_line_of_a_multi_line_error_carries_its_priority(journal: io.StringIO) -> None:
    problems = "config invalid:\nclients[0].addresses[3]: 'x' is not an IP address\nrules: bad"
    logging.getLogger("repogate.daemon").error("%s", problems)
    assert journal.getvalue().splitlines() == [
        "<3>error: config invalid:",
        "<3>clients[0].addresses[3]: 'x' is not an IP address",
        "<3>rules: bad",
    ]


def test_a_traceback_stays_on_the_line_of_its_error(journal: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("repogate").exception("failed")
    (line,) = journal.getvalue().splitlines()
    assert line.startswith("<3>error: failed | Traceback")
    assert line.endswith("ValueError: boom")


def test_pyroute2_warnings_are_quiet_but_its_errors_are_not(journal: io.StringIO) -> None:
    tcmsg = logging.getLogger("pyroute2.netlink.rtnl.tcmsg.common")
    tcmsg.warning("tcmsg: [Errno 2] No such file or directory: '/proc/net/psched'")
    tcmsg.warning("the tc subsystem functionality is limited")
    assert journal.getvalue() == ""
    tcmsg.error("netlink socket broken")
    assert journal.getvalue() == "<3>error: netlink socket broken\n"


def test_the_quieted_name_is_the_one_pyroute2_logs_under() -> None:
    common = pytest.importorskip("pyroute2.netlink.rtnl.tcmsg.common")
    assert common.log.name.split(".")[0] in QUIETED


def test_pyroute2_stays_quiet_after_it_resets_its_own_logger_on_import() -> None:
    """pyroute2's import sets its logger's level to 0 again (after setup_logging ran,
    in the daemon): the handler's filter still drops its warnings. A fresh interpreter,
    so the import really happens after setup_logging."""
    pytest.importorskip("pyroute2")
    script = (
        "import logging, sys\n"
        "from repogate.logs import setup_logging\n"
        "setup_logging('text', stream=sys.stdout)\n"
        "import pyroute2\n"
        "logging.getLogger('pyroute2').setLevel(0)\n"
        "logging.getLogger('pyroute2.netlink.rtnl.tcmsg.common').warning('tc is limited')\n"
        "logging.getLogger('pyroute2').error('a real error')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "agent")},
    )
    assert "tc is limited" not in result.stdout, result.stdout
    assert result.stdout.endswith("error: a real error\n"), result.stdout
