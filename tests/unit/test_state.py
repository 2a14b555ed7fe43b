"""state.py: an unusable state file is set aside, never a crash and never a silent loss."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repogate.addresses import NormalisedEntries
from repogate.state import STATE_VERSION, Record, StateStore, set_aside_file
from tests.unit.conftest import NOBODY, run_unprivileged

REPO = Path(__file__).resolve().parents[2]
ENTRIES = NormalisedEntries(frozenset({"10.0.0.1"}), frozenset(), frozenset(), frozenset())


def record(**overrides: Any) -> dict[str, Any]:
    good = {"fingerprint": "f", "fetched_at": 100.0, "origin": "/x", "addresses_v4": "10.0.0.1"}
    return {**good, **overrides}


def document(groups: object = None, holds: object = None, version: object = STATE_VERSION) -> str:
    body = {"version": version, "groups": {"mdm": record()} if groups is None else groups}
    return json.dumps({**body, "holds": {} if holds is None else holds})


def load(directory: Path) -> StateStore:
    store = StateStore(directory)
    store.load()
    return store


def aside(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("state.json.corrupt-*"))


def test_a_good_file_loads_and_nothing_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(document())
    store = load(tmp_path)
    assert store.get("mdm", "f") == Record("f", 100.0, "/x", ENTRIES)
    assert store.problem is None and store.set_aside is None
    assert aside(tmp_path) == []


def test_no_file_is_a_fresh_start_not_a_problem(tmp_path: Path) -> None:
    store = load(tmp_path / "absent")
    assert store.records == {} and store.problem is None and store.set_aside is None


UNUSABLE = {
    "not UTF-8": (b'{"version": 2, "groups": {"caf\xe9": {}}}', "not UTF-8"),
    "invalid JSON": (b'{"version": 2, "groups": {', "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    "wrong version": (document(version=1).encode(), "version 1"),
    "no version": (b'{"groups": {}}', "version None"),
    "a list for the document": (b"[]", "the document is a list"),
    "a list for groups": (document(groups=[]).encode(), "groups and holds must be objects"),
    "a list for holds": (document(holds=[1]).encode(), "groups and holds must be objects"),
    "a list for a record": (document(groups={"mdm": []}).encode(), "a record is a list"),
    "text for fetched_at": (
        document(groups={"mdm": record(fetched_at="yesterday")}).encode(),
        "fetched_at is 'yesterday'",
    ),
    "NaN for fetched_at": (
        document(groups={"mdm": record(fetched_at=float("nan"))}).encode(),
        "fetched_at is nan",
    ),
    "a boolean for fetched_at": (
        document(groups={"mdm": record(fetched_at=True)}).encode(),
        "fetched_at is True",
    ),
    "no fingerprint": (
        document(groups={"mdm": record(fingerprint=None)}).encode(),
        "fingerprint is null",
    ),
    "a list of entries": (
        document(groups={"mdm": record(addresses_v4=["10.0.0.1"])}).encode(),
        "addresses_v4 is a list",
    ),
    "a hold without a count": (
        document(holds={"mdm": {"digest": "d", "since": 1.0}}).encode(),
        "count is None",
    ),
}


@pytest.mark.parametrize(("raw", "reason"), UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_file_is_set_aside_with_a_warning_naming_it(
    tmp_path: Path, raw: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="repogate.state"):
        store = load(tmp_path)
    assert store.records == {} and store.holds == {}
    assert store.problem is not None and reason in store.problem
    assert store.set_aside is not None
    assert store.set_aside.parent == tmp_path
    assert store.set_aside.read_bytes() == raw  # kept for the admin, byte for byte
    assert not (tmp_path / "state.json").exists()
    assert store.set_aside.name in caplog.text
    assert store.set_aside_files() == [store.set_aside]


def test_the_next_save_writes_a_fresh_file_beside_the_one_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    store = load(tmp_path)
    store.put("mdm", Record("f", 100.0, "/x", ENTRIES))
    assert store.save_if_due(200.0)
    assert load(tmp_path).get("mdm", "f") == Record("f", 100.0, "/x", ENTRIES)
    assert len(aside(tmp_path)) == 1


def test_a_directory_in_its_place_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    (tmp_path / "state.json" / "inside").write_text("kept")
    store = load(tmp_path)
    assert store.problem is not None and "directory" in store.problem
    assert store.set_aside is not None and (store.set_aside / "inside").read_text() == "kept"
    store.put("mdm", Record("f", 100.0, "/x", ENTRIES))
    store.save()  # would fail forever (IsADirectoryError) had the directory stayed
    assert load(tmp_path).get("mdm", "f") is not None


def test_a_fifo_in_its_place_is_set_aside_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "state.json")
    store = load(tmp_path)
    assert store.problem is not None and "not a regular file" in store.problem
    assert store.set_aside is not None


def test_read_only_commands_report_the_problem_but_leave_the_file(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b"\xff\xfe")
    store = StateStore(tmp_path)
    store.load(read_only=True)
    assert store.problem is not None and "not UTF-8" in store.problem
    assert store.set_aside is None
    assert (tmp_path / "state.json").read_bytes() == b"\xff\xfe"


def test_set_aside_names_never_overwrite_an_earlier_one(tmp_path: Path) -> None:
    names = []
    for text in ("first", "second", "third"):
        (tmp_path / "state.json").write_text(text)
        names.append(set_aside_file(tmp_path / "state.json", now=0.0))
    assert [path.name for path in names] == [
        "state.json.corrupt-19700101T000000Z",
        "state.json.corrupt-19700101T000000Z-2",
        "state.json.corrupt-19700101T000000Z-3",
    ]
    assert [path.read_text() for path in names] == ["first", "second", "third"]


def test_a_corrupt_rewrite_while_running_keeps_the_entries_in_memory(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.put("mdm", Record("f", 100.0, "/x", ENTRIES))
    store.save()
    (tmp_path / "state.json").write_text("garbage, and longer than the file it replaced")
    assert store.reload_if_changed()
    assert store.set_aside is not None
    assert store.get("mdm", "f") == Record("f", 100.0, "/x", ENTRIES)
    assert store.save_if_due(0.0)  # written back at once, not at the next change
    assert load(tmp_path).get("mdm", "f") == Record("f", 100.0, "/x", ENTRIES)


# --- permissions: as the unprivileged service user, since root reads any file ---

PROBE = """
import json, sys
from pathlib import Path
from repogate.state import StateStore
store = StateStore(Path(sys.argv[1]))
store.load()
print(json.dumps({"problem": store.problem, "set_aside": str(store.set_aside or ""),
                  "records": len(store.records)}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside pytest's root-only tmp tree, so an unprivileged process reaches it."""
    path = Path(tempfile.mkdtemp(prefix="repogate-state-"))
    path.chmod(0o755)
    try:
        yield path / "state"
    finally:
        if (path / "state").is_dir():
            (path / "state").chmod(0o755)  # read-only for a test; rmtree needs to write
        shutil.rmtree(path)


def load_unprivileged(directory: Path) -> dict[str, Any]:
    """Load as `nobody` when root (via setpriv), else in a subprocess as ourselves."""
    return run_unprivileged(PROBE, str(directory))


def unreadable_state(directory: Path, *, writable_dir: bool) -> Path:
    directory.mkdir()
    state = directory / "state.json"
    state.write_text(document())
    state.chmod(0o000)
    if os.geteuid() == 0:
        os.chown(state, 0, 0)
        if writable_dir:
            os.chown(directory, NOBODY, NOBODY)
    directory.chmod(0o755 if writable_dir else 0o555)
    return state


def test_permission_denied_is_set_aside(shared_dir: Path) -> None:
    unreadable_state(shared_dir, writable_dir=True)
    result = load_unprivileged(shared_dir)
    assert result["problem"] == "Permission denied"
    assert result["records"] == 0
    assert Path(result["set_aside"]).parent == shared_dir
    assert not (shared_dir / "state.json").exists()


def test_when_even_the_rename_fails_it_warns_and_starts_empty(shared_dir: Path) -> None:
    state = unreadable_state(shared_dir, writable_dir=False)
    result = load_unprivileged(shared_dir)
    assert result == {"problem": "Permission denied", "set_aside": "", "records": 0}
    assert state.exists()  # left for the admin; never overwritten in place


def test_notes_tell_status_what_happened(tmp_path: Path) -> None:
    assert load(tmp_path).notes() == []
    (tmp_path / "state.json").write_text("[]")
    store = load(tmp_path)
    assert store.set_aside is not None
    (note,) = store.notes()
    assert note.startswith("state file was unusable (the document is a list")
    assert str(store.set_aside) in note
    (later,) = load(tmp_path).notes()  # another process (status) sees the file set aside
    assert later.startswith(f"1 unusable state file(s) set aside in {tmp_path}")
    assert store.set_aside.name in later


def test_notes_of_a_read_only_load(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{")
    store = StateStore(tmp_path)
    store.load(read_only=True)
    (note,) = store.notes()
    assert note.startswith(f"state file {tmp_path / 'state.json'} is unusable (not valid JSON")


def test_a_failed_save_is_said_in_notes_and_cleared_by_the_next_good_one(tmp_path: Path) -> None:
    """The state_dir's parent is a file: ENOTDIR even for root (chmod would not stop root)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    store = StateStore(blocker / "state")
    store.put("mdm", Record("f", 100.0, "/x", ENTRIES))
    with pytest.raises(NotADirectoryError):
        store.save()
    assert store.save_error == "Not a directory"
    (note,) = store.notes()
    assert note.startswith(f"cannot save the state file {store.path} (Not a directory): ")
    assert "a restart would start without them" in note
    with pytest.raises(NotADirectoryError):  # still due: the entries never reached the disk
        store.save_if_due(1.0)
    assert store.save_error == "Not a directory"
    blocker.unlink()  # the admin fixes state_dir; the next attempt succeeds
    store.save()
    assert store.save_error is None and store.notes() == []
    assert load(blocker / "state").get("mdm", "f") == Record("f", 100.0, "/x", ENTRIES)
