"""The Debian package: built from this checkout, its contents work as installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian) to build the package"
)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(built.stdout.strip())


def dpkg_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_control_fields_name_the_real_dependencies(deb: Path) -> None:
    assert dpkg_field(deb, "Package") == "repogate"
    assert dpkg_field(deb, "Architecture") == "all"
    depends = dpkg_field(deb, "Depends")
    for dependency in ("python3-nftables", "nftables", "python3 (>= 3.11)"):
        assert dependency in depends


def test_contents_are_owned_by_root_and_the_config_is_a_conffile(deb: Path, tmp_path: Path) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    assert "./usr/bin/repogate" in listing
    assert "./usr/lib/python3/dist-packages/repogate/cli.py" in listing
    assert "__pycache__" not in listing
    assert all(" root/root " in line for line in listing.splitlines())
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    assert (control / "conffiles").read_text().split() == ["/etc/repogate/repogate.toml"]


def test_the_packaged_cli_checks_the_packaged_config(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "usr/lib/python3/dist-packages")}
    result = subprocess.run(
        [
            str(tmp_path / "usr/bin/repogate"),
            "check",
            "--config",
            str(tmp_path / "etc/repogate/repogate.toml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ": ok: 1 client groups" in result.stdout
