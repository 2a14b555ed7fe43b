"""One Debian package per test session, built from this checkout, and its extracted tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .unitfile import REPO, UNIT, Unit, parse_unit

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the tests here marked `root` when not root, with the reason.

    A hook rather than `pytestmark`, which pytest ignores in a conftest; it sees every
    collected item, so it keeps to this directory. The package build and unit checks
    run as any user.
    """
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for a network namespace (run `make test` as root)")
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("root") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb (Debian) to build the package")
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(built.stdout.strip())


@pytest.fixture(scope="session")
def installed_root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files under a scratch root, as `dpkg -i` would lay them out."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(root)], check=True)
    # The targets the unit's default dependencies name, as any systemd host has them.
    units = root / "lib/systemd/system"
    for target in Path("/lib/systemd/system").glob("*.target"):
        shutil.copy2(target, units / target.name)
    return root


@pytest.fixture(scope="session")
def unit() -> Unit:
    """systemd/repogate.service, parsed."""
    return parse_unit(UNIT.read_text())
