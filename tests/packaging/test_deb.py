"""The Debian package: built from this checkout, its contents work as installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian) to build the package"
)


def dpkg_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_control_fields_name_the_real_dependencies(deb: Path) -> None:
    assert dpkg_field(deb, "Package") == "repogate"
    assert dpkg_field(deb, "Architecture") == "all"
    depends = dpkg_field(deb, "Depends")
    for dependency in (
        "python3-nftables",
        "nftables",
        "python3 (>= 3.11)",
        "python3-apscheduler (>= 3.9)",
        "python3-pyroute2 (>= 0.7)",
        # the shipped config fetches Atlassian's feed over HTTPS
        "ca-certificates",
        # postinst creates the service user with systemd-sysusers (dh_installsysusers)
        "systemd | systemd-standalone-sysusers | systemd-sysusers",
    ):
        assert dependency in depends, depends
    assert dpkg_field(deb, "Maintainer").endswith("<maintainers@repogate.dev>")


def test_contents_are_owned_by_root_and_the_config_is_a_conffile(deb: Path, tmp_path: Path) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    assert "./usr/bin/repogate" in listing
    assert "./usr/lib/python3/dist-packages/repogate/cli/main.py" in listing
    assert "__pycache__" not in listing
    assert all(" root/root " in line for line in listing.splitlines())
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    assert (control / "conffiles").read_text().split() == ["/etc/repogate/repogate.toml"]


def test_the_packaged_cli_checks_the_packaged_config(installed_root: Path) -> None:
    root = installed_root
    env = {**os.environ, "PYTHONPATH": str(root / "usr/lib/python3/dist-packages")}
    result = subprocess.run(
        [
            str(root / "usr/bin/repogate"),
            "check",
            "--config",
            str(root / "etc/repogate/repogate.toml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ": ok: 1 client groups" in result.stdout
