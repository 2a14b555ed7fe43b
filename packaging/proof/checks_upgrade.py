"""The package's lifecycle after the service ran: upgrade, then purge.

An upgrade must keep the edited config and change nothing in the kernel's
table, which `nft monitor` watches for the whole upgrade. Purge must remove
the package and /etc/repogate; what else it leaves is reported as facts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .host import APT_ENV, run_host
from .package import PACKAGE, STAGE, TABLE, UNIT
from .report import Failed, first_lines
from .session import ProofSession


def table_lines(events: str) -> list[str]:
    """`nft monitor` lines that touch table inet <TABLE>."""
    pattern = re.compile(rf"\binet {re.escape(TABLE)}(\s|$)")
    return [line for line in events.splitlines() if pattern.search(line)]


class _Events:
    """What `nft monitor` printed, filled in when it stops."""

    text = ""


class UpgradeChecks(ProofSession):
    """Upgrade to the same package with a higher version, then purge it."""

    def build_upgrade(self) -> Path:
        """The same package with a higher version: +proof1 appended."""
        tree = self.workdir / "upgrade"
        run_host(["dpkg-deb", "--raw-extract", self.deb, tree])
        control = tree / "DEBIAN/control"
        text = control.read_text()
        version = re.search(r"^Version: (\S+)$", text, re.M)
        if not version:
            raise Failed("no Version: in DEBIAN/control")
        self.new_version = version.group(1) + "+proof1"
        control.write_text(text.replace(version.group(0), f"Version: {self.new_version}", 1))
        new = self.c.path(STAGE) / f"{PACKAGE}_{self.new_version}_all.deb"
        run_host(["dpkg-deb", "--root-owner-group", "--build", tree, new])
        new.chmod(0o644)
        return new

    def upgrade(self) -> str:
        new = self.build_upgrade()
        self.require_active()
        self.write_config(self.edited_config + "# local edit kept across upgrades (proof)\n")
        edited = self.config_path.read_text()
        pid, rules = self.main_pid(), self.ruleset()
        with self.nft_monitor() as events:
            self.apt_install(new.name, "-o", "Dpkg::Options::=--force-confold")
            self.wait_until(
                "the service active after the upgrade", lambda: self.is_active() == "active", 60
            )
            time.sleep(3)  # a restarted daemon's first reconcile happens here
        problems = []
        version = self.c.must("dpkg-query", "--show", "--showformat=${Version}", PACKAGE)
        if version != self.new_version:
            problems.append(f"installed version {version!r}, want {self.new_version!r}")
        if self.config_path.read_text() != edited:
            problems.append("the edited config was replaced")
        if self.is_active() != "active":
            problems.append(f"service {self.is_active()!r} after the upgrade")
        touched = table_lines(events.text)
        if touched:
            problems.append(
                f"nft monitor saw {len(touched)} changes: {first_lines(chr(10).join(touched), 3)}"
            )
        if self.ruleset() != rules:
            problems.append("table contents differ after the upgrade")
        new_pid = self.main_pid()
        self.report.info(
            f"upgrade to {version}: daemon {'restarted' if new_pid != pid else 'NOT restarted'} "
            f"(MainPID {pid} -> {new_pid}); nft monitor: {len(events.text.splitlines())} lines "
            f"in all, {len(touched)} for table inet {TABLE}"
        )
        leftovers = [p.name for p in self.config_path.parent.glob("*.dpkg-*")]
        if leftovers:
            self.report.info(f"upgrade left {leftovers} in /etc/repogate")
        if problems:
            raise Failed("; ".join(problems))
        return f"{version}, config kept, active, no table events"

    @contextmanager
    def nft_monitor(self) -> Iterator[_Events]:
        """`nft monitor` in the container for the duration, as a transient unit.

        A marker table is added before and after, and waited for in the log, so
        an empty log means the monitor was listening and saw nothing else.
        """
        log_inside = f"{STAGE}/nft-monitor.log"
        log = self.c.path(log_inside)
        events = _Events()
        self.c.must(
            "systemd-run",
            "--quiet",
            "--collect",
            "--unit=repogate-proof-monitor",
            f"--property=StandardOutput=truncate:{log_inside}",
            "stdbuf",
            "-oL",
            "nft",
            "monitor",
        )
        try:
            self._marker(log, "repogate_proof_begin")
            yield events
            self._marker(log, "repogate_proof_end")
        finally:
            self.c.run("systemctl", "stop", "repogate-proof-monitor.service")
            events.text = log.read_text() if log.exists() else ""

    def _marker(self, log: Path, name: str) -> None:
        def seen() -> bool:
            self.c.must("nft", "add", "table", "inet", name)
            self.c.must("nft", "delete", "table", "inet", name)
            return log.exists() and name in log.read_text()

        self.wait_until(f"nft monitor reporting marker {name}", seen, 15)

    def purge(self) -> str:
        purged = self.c.run("apt-get", "purge", "-y", "-q", PACKAGE, timeout=300, env=APT_ENV)
        if purged.returncode != 0:
            raise Failed(f"apt-get purge exited {purged.returncode}: {first_lines(purged.stderr)}")
        self.purge_output = purged.stdout + purged.stderr
        status = self.c.run("dpkg-query", "--show", "--showformat=${db:Status-Status}", PACKAGE)
        problems = []
        if status.returncode == 0 and status.stdout.strip() not in ("not-installed", ""):
            problems.append(f"dpkg still lists it: {status.stdout.strip()}")
        if self.c.path("/etc/repogate").exists():
            left = sorted(p.name for p in self.c.path("/etc/repogate").iterdir())
            problems.append(f"/etc/repogate remains: {left}")
        self._purge_facts()
        table_problem = self._table_after_purge()
        if table_problem:
            problems.append(table_problem)
        if problems:
            raise Failed("; ".join(problems))
        return "dpkg: not installed; /etc/repogate: gone"

    def _purge_facts(self) -> None:
        def gone(inside: str) -> str:
            return "kept" if self.c.path(inside).exists() else "gone"

        user = self.c.run("getent", "passwd", PACKAGE)
        processes = (
            self.c.run("pgrep", "-u", PACKAGE).stdout.split() if user.returncode == 0 else []
        )
        self.report.info(
            f"after purge: user {PACKAGE} {'kept' if user.returncode == 0 else 'removed'}; "
            f"/var/lib/repogate {gone('/var/lib/repogate')}; "
            f"enable link {gone('/etc/systemd/system/multi-user.target.wants/' + UNIT)}; "
            f"unit is-active {self.is_active()}; processes of the user: {len(processes)}"
        )

    def _table_after_purge(self) -> str | None:
        listed = self.c.run("nft", "list", "table", "inet", TABLE)
        if listed.returncode != 0:
            self.report.info(f"after purge: table inet {TABLE} removed")
            return None
        removal = f"nft delete table inet {TABLE}"
        told = "says" if removal in self.purge_output else "does NOT say"
        self.report.info(
            f"after purge: table inet {TABLE} KEPT in the kernel, enforcing with no daemon; "
            f"purge's output {told} `{removal}`"
        )
        deleted = self.c.run("nft", "delete", "table", "inet", TABLE)
        if deleted.returncode != 0:
            why = first_lines(deleted.stderr)
            return f"`nft delete table inet {TABLE}` exited {deleted.returncode}: {why}"
        if self.c.run("nft", "list", "table", "inet", TABLE).returncode == 0:
            return f"table inet {TABLE} still listed after `nft delete table`"
        self.report.info(f"`nft delete table inet {TABLE}` removed it")
        return None
