"""The systemd unit: systemd accepts it, scores its sandbox, and its privileges suffice.

`systemd-analyze verify` exits 0 on unknown keys and missing binaries, so any output
at all is a failure; it runs against the package extracted into a scratch root, where
/usr/bin/repogate exists. test_sandbox.py runs the daemon inside the unit's
privileges and sandbox, rebuilt without systemd.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .unitfile import QUIET_ENV, REPO, UNIT, Unit, is_true, words

SYSUSERS = REPO / "systemd" / "repogate.sysusers"
UNIT_IN_PACKAGE = "lib/systemd/system/repogate.service"
SYSUSERS_IN_PACKAGE = "usr/lib/sysusers.d/repogate.conf"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)"
)

# What the security table still marks as exposed, each for a reason the unit states:
# the daemon's job needs the host's network, netlink, CAP_NET_ADMIN (ambient, as a
# non-root user), inet sockets for list fetches and metrics, and the notify socket.
# ProtectClock= itself adds `DeviceAllow=char-rtc r`. Any new entry is a regression.
EXPECTED_EXPOSED = {
    "AmbientCapabilities=",
    "CapabilityBoundingSet=~CAP_NET_ADMIN",
    "DeviceAllow=",
    "IPAddressDeny=",
    "PrivateNetwork=",
    "PrivateUsers=",
    "RootDirectory=/RootImage=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_NETLINK",
    "RestrictAddressFamilies=~AF_UNIX",
}


def test_the_unit_wraps_the_daemon_contract(unit: Unit) -> None:
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStartPre"] == ["/usr/bin/repogate check"]
    assert service["ExecStart"] == ["/usr/bin/repogate run"]
    assert service["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] and service["WatchdogSec"]
    assert service["StateDirectory"] == ["repogate"]
    assert service["ConfigurationDirectory"] == ["repogate"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_is_ordered_after_the_flush_and_before_the_network(
    unit: Unit,
) -> None:
    ordering = unit["Unit"]
    assert "nftables.service" in words(ordering, "After")
    assert "network.target" in words(ordering, "Before")
    # Default dependencies: no ordering cycle with sysinit.target units that wait for
    # the network (cloud-init), and the sandbox is fully scored. Gating from the first
    # packet at boot is the job of the boot ruleset nftables.service includes.
    assert "DefaultDependencies" not in ordering
    assert "nftables.service" in words(ordering, "ReloadPropagatedFrom")


def test_the_unit_grants_cap_net_admin_and_nothing_else(
    unit: Unit,
) -> None:
    service = unit["Service"]
    assert service["User"] == ["repogate"]
    assert service["Group"] == ["repogate"]
    assert not is_true(service, "DynamicUser")
    assert words(service, "AmbientCapabilities") == ["CAP_NET_ADMIN"]
    assert words(service, "CapabilityBoundingSet") == ["CAP_NET_ADMIN"]
    assert is_true(service, "NoNewPrivileges")
    # Known limits: these break nftables or gate the wrong namespace.
    assert not is_true(service, "PrivateUsers")
    assert not is_true(service, "PrivateNetwork")
    assert "IPAddressDeny" not in service
    families = words(service, "RestrictAddressFamilies")
    assert families[0] != "~" and not families[0].startswith("~")
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    for switch in (
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RemoveIPC",
    ):
        assert is_true(service, switch), switch
    assert service["ProtectSystem"] == ["strict"]
    assert service["SystemCallArchitectures"] == ["native"]
    assert service["SystemCallFilter"][0] == "@system-service"


@needs_systemd_analyze
def test_verify_prints_nothing_against_the_installed_tree(installed_root: Path) -> None:
    unit = installed_root / UNIT_IN_PACKAGE
    result = verify(installed_root, unit)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_verify_is_not_vacuous_in_that_root(installed_root: Path, tmp_path: Path) -> None:
    """The same call does report a typo and a missing binary, so silence means something."""
    broken = tmp_path / "root" / "etc/systemd/system/repogate-broken.service"
    broken.parent.mkdir(parents=True)
    text = UNIT.read_text().replace("ExecStart=/usr/bin/repogate run", "ExecStart=/usr/bin/nope")
    broken.write_text(text + "\n[Service]\nWatchdogSecs=5\n")
    result = verify(tmp_path / "root", broken)
    output = result.stdout + result.stderr
    assert "Unknown key 'WatchdogSecs'" in output
    assert "/usr/bin/nope is not executable" in output


def verify(root: Path, unit: Path) -> subprocess.CompletedProcess[str]:
    # systemd 252: --root makes verify resolve Exec*= binaries inside the root, so it
    # needs no installed package. It checks the first command of each Exec*= type.
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", str(unit)],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        check=False,
        timeout=30,
    )


def security(unit: Path) -> tuple[float, set[str]]:
    """The overall exposure and the names of the items still exposed."""
    table = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--json=short", str(unit)],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        check=True,
        timeout=30,
    )
    exposed = {item["name"] for item in json.loads(table.stdout) if item["exposure"]}
    text = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        check=False,
        timeout=30,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", text.stdout)
    assert found, text.stdout + text.stderr
    return float(found.group(1)), exposed


@needs_systemd_analyze
def test_security_exposure_is_what_the_daemon_needs_and_no_more(tmp_path: Path) -> None:
    score, exposed = security(UNIT)
    assert exposed == EXPECTED_EXPOSED
    assert score <= 1.5  # 1.49 here, printed as 1.5


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd-sysusers")
def test_sysusers_creates_a_system_user_without_login(tmp_path: Path) -> None:
    conf = tmp_path / SYSUSERS_IN_PACKAGE
    conf.parent.mkdir(parents=True)
    shutil.copy(SYSUSERS, conf)
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", conf.name], check=True, env=QUIET_ENV)
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").open()}
    name, _, uid, gid, _, home, shell = users["repogate"]
    assert name == "repogate"
    assert int(uid) < 1000 and int(gid) < 1000
    assert home == "/var/lib/repogate"
    assert shell.strip() == "/usr/sbin/nologin"
    assert "repogate:x:" in (tmp_path / "etc/group").read_text()


def test_the_package_ships_the_unit_and_the_sysusers_entry(installed_root: Path) -> None:
    assert (installed_root / UNIT_IN_PACKAGE).read_text() == UNIT.read_text()
    assert (installed_root / SYSUSERS_IN_PACKAGE).read_text() == SYSUSERS.read_text()
    assert (installed_root / "usr/share/doc/repogate/docs/service.md").is_file()


def test_postinst_creates_the_user_and_never_enables_or_starts(deb: Path, tmp_path: Path) -> None:
    """Run the package's postinst (written by debhelper) against stand-ins that record
    their arguments: a fresh install creates the user and neither enables nor starts."""
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    shims = tmp_path / "bin"
    shims.mkdir()
    tools = ("systemd-sysusers", "deb-systemd-helper", "deb-systemd-invoke", "systemctl")
    for tool in (*tools, "py3compile", "pypy3compile"):
        shim = shims / tool
        # deb-systemd-helper answers "no" to was-enabled / debian-installed questions.
        shim.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> {calls}\n[ {tool} != deb-systemd-helper ]\n'
        )
        shim.chmod(0o755)
    subprocess.run(
        ["/bin/sh", str(control / "postinst"), "configure", ""],
        env={"PATH": f"{shims}:/usr/bin:/bin"},
        check=True,
    )
    recorded = calls.read_text().splitlines()
    assert "systemd-sysusers repogate.conf" in recorded, recorded
    actions = [line for line in recorded if line.startswith(("deb-systemd-invoke", "systemctl"))]
    assert not any(re.search(r"\b(enable|start|restart)\b", line) for line in actions), recorded
