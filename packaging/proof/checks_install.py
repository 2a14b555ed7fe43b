"""The checks an admin meets first: install, unit state, user, config, enable.

The service must arrive installed but disabled; the admin edits the config,
checks it as the service user, and only then enables it.
"""

from __future__ import annotations

import time

from .host import APT_ENV
from .package import PACKAGE, STAGE, UNIT
from .report import Failed, first_lines
from .session import ProofSession


class InstallChecks(ProofSession):
    """From `apt-get install` to an enabled, active service."""

    def install(self) -> str:
        bare = self.c.must(
            "apt-get",
            "install",
            "--simulate",
            "--no-install-recommends",
            f"{STAGE}/{self.deb.name}",
            env=APT_ENV,
        )
        without_recommends = sum(1 for line in bare.splitlines() if line.startswith("Inst "))
        before = self.installed_packages()
        self.apt_install(self.deb.name)
        pulled = sorted(self.installed_packages() - before - {PACKAGE})
        if PACKAGE not in self.installed_packages():
            raise Failed("apt finished but dpkg does not list repogate as installed")
        self.report.info(
            f"apt pulled in {len(pulled)} packages besides {PACKAGE}: {' '.join(pulled)}"
        )
        self.report.info(
            f"with --no-install-recommends it would be {without_recommends - 1} "
            f"(the rest come from Recommends, the default for `apt install`)"
        )
        return f"{len(pulled)} dependencies installed with it"

    def unit_disabled(self) -> str:
        enabled = self.c.run("systemctl", "is-enabled", UNIT).stdout.strip()
        active = self.is_active()
        if enabled != "disabled":
            raise Failed(f"is-enabled says {enabled!r}, want 'disabled'")
        if active != "inactive":
            raise Failed(f"is-active says {active!r} right after install, want 'inactive'")
        return f"is-enabled: {enabled}, is-active: {active}"

    def user_exists(self) -> str:
        entry = self.c.must("getent", "passwd", PACKAGE).strip()
        fields = entry.split(":")
        self.uid = fields[2]
        return f"uid {fields[2]}, home {fields[5]}, shell {fields[6]}"

    def check_as_user(self) -> str:
        """The shipped example names example networks: an admin sets the office LAN."""
        shipped = self.config_path.read_text()
        example, office = '"10.20.0.0/16"', '"172.16.40.0/22"'
        if example in shipped:
            self.write_config(shipped.replace(example, office, 1))
            edit = f"office {example} -> {office}"
        else:
            edit = f"no {example} in the shipped config; used as shipped"
        self.edited_config = self.config_path.read_text()
        out = self.c.must("runuser", "-u", PACKAGE, "--", "repogate", "check")
        return f"{edit}; check says: {first_lines(out, 1)}"

    def enable_now(self) -> str:
        self.enabled_at = time.monotonic()
        self.c.must("systemctl", "enable", "--now", UNIT, timeout=120)
        return f"is-enabled: {self.c.run('systemctl', 'is-enabled', UNIT).stdout.strip()}"

    def active(self) -> str:
        self.require_active()
        return f"MainPID {self.main_pid()}"
