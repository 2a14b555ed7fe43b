"""sources/file: the signature sees everything that decides whether the daemon can read."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repogate.config import FileClients
from repogate.errors import SourceError
from repogate.sources.file import FileSource, read_text
from tests.unit.conftest import NOBODY, run_unprivileged

REPO = Path(__file__).resolve().parents[2]
LIMITS = {4: 8, 6: 32}


def source(path: Path) -> FileSource:
    return FileSource(FileClients("mdm", path), LIMITS)


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    path = tmp_path / "mdm.txt"
    path.write_text("10.50.0.1\n")
    return path


def test_the_signature_is_stable_while_nothing_changes(listed: Path) -> None:
    assert source(listed).signature() == source(listed).signature() is not None


def test_a_chmod_changes_the_signature_even_for_root(listed: Path) -> None:
    before = source(listed).signature()
    listed.chmod(0o000)
    assert source(listed).signature() != before


def test_a_chown_changes_the_signature(listed: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    before = source(listed).signature()
    time.sleep(0.02)  # ctime ticks with the kernel's coarse clock
    os.chown(listed, NOBODY, NOBODY)
    assert source(listed).signature() != before


def test_a_file_replaced_by_one_of_the_same_size_changes_the_signature(listed: Path) -> None:
    before = source(listed).signature()
    replacement = listed.with_name("new")
    replacement.write_text("10.50.0.2\n")
    replacement.replace(listed)
    assert source(listed).signature() != before


def test_a_deleted_file_has_no_signature_and_fails(listed: Path) -> None:
    listed.unlink()
    assert source(listed).signature() is None
    with pytest.raises(SourceError, match=r"cannot read .*No such file"):
        source(listed).fetch()


def test_a_directory_in_its_place_has_no_signature_and_fails(listed: Path) -> None:
    listed.unlink()
    listed.mkdir()
    assert source(listed).signature() is None
    with pytest.raises(SourceError, match="Is a directory"):
        source(listed).fetch()


def test_a_fifo_in_its_place_fails_at_once_instead_of_hanging(listed: Path) -> None:
    listed.unlink()
    os.mkfifo(listed)
    assert source(listed).signature() is None
    with pytest.raises(SourceError, match="not a regular file"):
        source(listed).fetch()


def test_the_size_limit_is_checked_on_what_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_text("12345")
    assert read_text(path, 5) == "12345"
    with pytest.raises(SourceError, match="over the 4 bytes limit"):
        read_text(path, 4)


# --- as the service user: root reads a chmod 000 file, `repogate` does not ---

PROBE = """
import json, sys
from pathlib import Path
from repogate.config import FileClients
from repogate.errors import SourceError
from repogate.sources.file import FileSource

path = Path(sys.argv[1])
source = FileSource(FileClients("mdm", path), {4: 8, 6: 32})
before = source.signature()
accepted = source.fetch().accepted
path.chmod(0o000)
after = source.signature()
try:
    source.fetch()
    error = None
except SourceError as exc:
    error = str(exc)
print(json.dumps({"before": before, "after": after, "accepted": accepted, "error": error}))
"""


@pytest.fixture
def service_list() -> Iterator[Path]:
    """A list the unprivileged user owns, outside pytest's root-only tmp tree."""
    directory = Path(tempfile.mkdtemp(prefix="repogate-file-"))
    directory.chmod(0o755)
    path = directory / "mdm.txt"
    path.write_text("10.50.0.1\n10.50.0.2\n")
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(directory)


def run_as_service_user(path: Path) -> dict[str, Any]:
    """PROBE as `nobody` when we are root (via setpriv), else as ourselves."""
    return run_unprivileged(PROBE, str(path))


def test_a_list_made_unreadable_changes_the_signature_and_fails(service_list: Path) -> None:
    result = run_as_service_user(service_list)
    assert result["accepted"] == 2
    assert result["before"] is not None and result["before"][-1] is True
    assert result["after"] != result["before"]
    assert result["after"][-1] is False  # the access check as the reader sees it
    assert result["error"] == f"cannot read {service_list}: Permission denied"
