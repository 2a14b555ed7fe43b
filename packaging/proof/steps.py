"""The proof's checks in order, and which failures block the checks after them.

The order is the one an admin meets the package in; a check that later ones
need (the install, the service running, ...) skips them when it fails, so one
failure is reported once and not as a cascade.
"""

from __future__ import annotations

from collections.abc import Callable

from .checks_install import InstallChecks
from .checks_service import METRICS_URL, STOP_LIMIT, ServiceChecks
from .checks_upgrade import UpgradeChecks
from .package import PACKAGE, TABLE, UNIT


class Proof(InstallChecks, ServiceChecks, UpgradeChecks):
    """The checks, in the order an admin meets the package."""

    def run_all(self) -> None:
        """Each check in order; a failed prerequisite skips the checks that need it."""
        steps: list[tuple[str, Callable[[], str | None], bool]] = [
            # (what, body, later checks need it)
            ("apt-get install ./" + self.deb.name + " in the booted system", self.install, True),
            (f"{UNIT} installed and disabled after install", self.unit_disabled, False),
            (f"service user {PACKAGE} created by the package", self.user_exists, True),
            ("edited config passes `repogate check` as the service user", self.check_as_user, True),
            (f"systemctl enable --now {PACKAGE}", self.enable_now, True),
            ("systemctl is-active: active", self.active, True),
            ("systemctl status shows the daemon's Status: line", self.status_line, False),
            (f"metrics on loopback ({METRICS_URL}) serve repogate_build_info", self.metrics, False),
            (f"nft list table inet {TABLE}", self.table_exists, False),
            (
                f"main process runs as {PACKAGE} with exactly cap_net_admin",
                self.process_identity,
                False,
            ),
            (
                "journalctl -p warning -u repogate is empty since the clean start",
                self.no_warnings,
                False,
            ),
            (
                "systemctl reload with the good config: still active, same process",
                self.reload_good,
                True,
            ),
            (
                "systemctl reload with a broken config fails; old daemon and rules stay",
                self.reload_broken,
                True,
            ),
            (
                f"systemctl stop within {STOP_LIMIT:.0f}s while an HTTPS source hangs",
                self.stop_while_hanging,
                True,
            ),
            (
                "upgrade keeps the edited config and the service, table untouched",
                self.upgrade,
                False,
            ),
            (f"apt-get purge {PACKAGE}: package and /etc/repogate gone", self.purge, False),
        ]
        blocked: str | None = None
        for what, body, needed in steps:
            if blocked:
                self.report.not_run(what, f"needs: {blocked}")
                continue
            if not self.report.check(what, body) and needed:
                blocked = what
