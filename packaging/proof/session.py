"""What the checks share: the container, the report, state, and their helpers.

The checks are split by theme into mixins (checks_install, checks_service,
checks_upgrade); later checks use what earlier ones learned (the service
user's uid, when it was enabled, the edited config), so that state lives here,
in the one class they all derive from.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .container import Container
from .host import APT_ENV
from .package import CONFIG, STAGE, TABLE, UNIT
from .report import Failed, Report, first_lines


class ProofSession:
    """The container under proof and what the checks found out so far."""

    def __init__(self, container: Container, report: Report, deb: Path, workdir: Path) -> None:
        self.c = container
        self.report = report
        self.deb = deb
        self.workdir = workdir
        self.uid: str | None = None
        self.enabled_at: float | None = None
        self.config_path = container.path(CONFIG)
        self.edited_config = ""
        self.new_version = ""
        self.purge_output = ""

    def systemctl_show(self, prop: str) -> str:
        return self.c.must("systemctl", "show", "--property", prop, "--value", UNIT).strip()

    def main_pid(self) -> int:
        return int(self.systemctl_show("MainPID"))

    def is_active(self) -> str:
        return self.c.run("systemctl", "is-active", UNIT).stdout.strip()

    def require_active(self) -> None:
        state = self.is_active()
        if state != "active":
            raise Failed(f"is-active says {state!r}; {self.recent_journal()}")

    def recent_journal(self, lines: int = 6) -> str:
        out = self.c.run(
            "journalctl",
            "--unit",
            UNIT,
            "--no-pager",
            "--quiet",
            "--output=cat",
            f"--lines={lines}",
        ).stdout
        return "journal: " + first_lines(out, lines)

    def ruleset(self) -> str:
        return self.c.must("nft", "--stateless", "list", "table", "inet", TABLE)

    def reload(self) -> subprocess.CompletedProcess[str]:
        return self.c.run("systemctl", "reload", UNIT, timeout=60)

    def apt_install(self, deb_name: str, *options: str) -> str:
        return self.c.must(
            "apt-get",
            "install",
            "-y",
            "-q",
            *options,
            f"{STAGE}/{deb_name}",
            timeout=900,
            env=APT_ENV,
        )

    def installed_packages(self) -> set[str]:
        out = self.c.must("dpkg-query", "--show", "--showformat=${Package} ${db:Status-Status}\\n")
        return {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}

    def wait_until(self, what: str, test: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not test():
            if time.monotonic() > deadline:
                raise Failed(f"{what}: not within {timeout:.0f}s")
            time.sleep(0.3)

    def write_config(self, text: str) -> None:
        # Written from the host: the root is a plain directory, owner and mode stay.
        self.config_path.write_text(text)
