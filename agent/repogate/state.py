"""Last known good entries of dynamic sources, kept on disk so they survive restarts.

Written atomically (temp file, fsync, rename, fsync of the directory), so a crash
or power loss leaves either the old file or the new one. A file that cannot be used
(unreadable, not UTF-8, not our JSON, a directory in its place) is renamed to
`state.json.corrupt-<UTC time>` beside it, with a warning naming the new name, and
the daemon starts from what the kernel holds and its sources fetch: a bad file must
never stop the daemon, and renaming it keeps it for the admin instead of a crash
loop or a silent overwrite.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repogate.addresses import NormalisedEntries

STATE_FILE = "state.json"
STATE_VERSION = 2
SET_ASIDE_INFIX = ".corrupt-"  # state.json.corrupt-20250102T030405Z
log = logging.getLogger(__name__)


class _UnusableStateError(ValueError):
    """The state file is not one repogate wrote; the message says why (never leaves here)."""


@dataclass(frozen=True)
class Record:
    """A source's last good result: its entries, when fetched, and for which config."""

    fingerprint: str
    fetched_at: float
    origin: str
    entries: NormalisedEntries

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "fetched_at": self.fetched_at,
            "origin": self.origin,
            # One space-separated string per set, unsorted: order does not matter to a
            # set, and a JSON list of 100k strings costs several times more to write.
            "addresses_v4": " ".join(self.entries.addresses_v4),
            "addresses_v6": " ".join(self.entries.addresses_v6),
            "networks_v4": " ".join(self.entries.networks_v4),
            "networks_v6": " ".join(self.entries.networks_v6),
        }

    @classmethod
    def from_json(cls, data: object) -> Record:
        """Raise ValueError unless `data` has the shape `to_json` writes."""
        if not isinstance(data, dict):
            raise _UnusableStateError(f"a record is {_kind(data)}, not an object")

        def texts(key: str) -> frozenset[str]:
            values = data.get(key, "")
            if not isinstance(values, str):
                raise _UnusableStateError(f"{key} is {_kind(values)}, not a string of entries")
            return frozenset(values.split())

        return cls(
            fingerprint=_string(data, "fingerprint"),
            fetched_at=_time(data, "fetched_at"),
            origin=_string(data, "origin", ""),
            entries=NormalisedEntries(
                texts("addresses_v4"),
                texts("addresses_v6"),
                texts("networks_v4"),
                texts("networks_v6"),
            ),
        )


@dataclass(frozen=True)
class Hold:
    """A shrunk result held back: its digest (to see the next refresh agree), size, since."""

    digest: str
    count: int
    since: float
    # When the fetch that proposed it ran: only a later fetch can agree with it.
    seen: float = 0.0

    @classmethod
    def from_json(cls, data: object) -> Hold:
        if not isinstance(data, dict):
            raise _UnusableStateError(f"a hold is {_kind(data)}, not an object")
        count = data.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise _UnusableStateError(f"a hold's count is {count!r}, not a whole number")
        seen = _time(data, "seen") if "seen" in data else 0.0
        return cls(_string(data, "digest"), count, _time(data, "since"), seen)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "null" if value is None else "a number")


def _string(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise _UnusableStateError(f"{key} is {_kind(value)}, not a string")
    return value


def _time(data: Mapping[str, Any], key: str) -> float:
    """A finite number of seconds: NaN would make every staleness comparison false."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _UnusableStateError(f"{key} is {value!r}, not a time in seconds")
    return float(value)


def _decode(raw: bytes) -> tuple[dict[str, Record], dict[str, Hold]]:
    """The records and holds in a state file's bytes, or _UnusableStateError saying why not."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _UnusableStateError(f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise _UnusableStateError(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise _UnusableStateError(f"the document is {_kind(document)}, not an object")
    if document.get("version") != STATE_VERSION:
        raise _UnusableStateError(
            f"version {document.get('version')!r}, this repogate reads {STATE_VERSION}"
        )
    groups, holds = document.get("groups"), document.get("holds", {})
    if not isinstance(groups, dict) or not isinstance(holds, dict):
        raise _UnusableStateError("groups and holds must be objects")
    return (
        {name: Record.from_json(record) for name, record in groups.items()},
        {name: Hold.from_json(hold) for name, hold in holds.items()},
    )


class StateStore:
    """Records per client group, loaded once and saved whenever they change.

    Entries are saved as soon as they change; a refresh that only confirms them
    moves `fetched_at` in memory and reaches the disk at most every `touch_interval`
    seconds, so a 100,000-entry list refreshed every ten seconds is not rewritten
    every ten seconds.

    After `load`, `problem` says why the file on disk was not used (None when it was,
    or when there was none) and `set_aside` where it was moved, for status to show.
    """

    def __init__(self, directory: Path, touch_interval: float = 300.0) -> None:
        self.path = directory / STATE_FILE
        self.records: dict[str, Record] = {}
        self.holds: dict[str, Hold] = {}
        self.touch_interval = touch_interval
        self.problem: str | None = None
        self.set_aside: Path | None = None
        self.save_error: str | None = None  # why the last save failed, for status
        self._loaded_signature: tuple[int, int] | None = None
        self._entries_dirty = False
        self._touched = False
        self._saved_at = 0.0

    def load(self, *, read_only: bool = False) -> None:
        """Read the file. Never raises: an unusable one is renamed aside (only reported
        when `read_only`, for status and explain) and the store starts empty."""
        self._loaded_signature = self._signature()
        self.problem = self.set_aside = None
        try:
            self.records, self.holds = _decode(_read(self.path))
        except FileNotFoundError:
            self.records, self.holds = {}, {}
        except OSError as exc:
            self.records, self.holds = {}, {}
            self._unusable(exc.strerror or str(exc), read_only)
        except _UnusableStateError as exc:
            self.records, self.holds = {}, {}
            self._unusable(str(exc), read_only)

    def _unusable(self, reason: str, read_only: bool) -> None:
        self.problem = reason
        if read_only:
            log.warning("state file %s is unusable, ignoring it: %s", self.path, reason)
            return
        try:
            self.set_aside = set_aside_file(self.path)
        except OSError as exc:
            # Left in place: the next save replaces a file atomically, and one that cannot
            # be replaced (a directory) fails that save with its own warning.
            log.warning(
                "state file %s is unusable, ignoring it: %s; could not move it aside: %s",
                self.path,
                reason,
                exc.strerror or exc,
            )
            return
        self._loaded_signature = None
        log.warning(
            "state file %s is unusable, ignoring it: %s; moved it to %s",
            self.path,
            reason,
            self.set_aside,
        )

    def set_aside_files(self) -> list[Path]:
        """State files set aside so far (by any process), oldest first, for status."""
        try:
            return sorted(self.path.parent.glob(f"{STATE_FILE}{SET_ASIDE_INFIX}*"))
        except OSError:
            return []

    def notes(self) -> list[str]:
        """What status should tell the admin about the state file, one line each."""
        lines = []
        if self.problem is not None and self.set_aside is not None:
            lines.append(
                f"state file was unusable ({self.problem}); moved to {self.set_aside}, "
                "last known good entries start over"
            )
        elif self.problem is not None:
            lines.append(
                f"state file {self.path} is unusable ({self.problem}); "
                "its last known good entries are not used"
            )
        if self.save_error is not None:  # a read-only, full or foreign-owned state_dir
            lines.append(
                f"cannot save the state file {self.path} ({self.save_error}): its last known "
                "good entries live in memory only, and a restart would start without them"
            )
        earlier = [path for path in self.set_aside_files() if path != self.set_aside]
        if earlier:
            lines.append(
                f"{len(earlier)} unusable state file(s) set aside in {self.path.parent} "
                f"(latest {earlier[-1].name}): inspect, then delete them"
            )
        return lines

    def _signature(self) -> tuple[int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def reload_if_changed(self) -> bool:
        """Re-read the file if someone else (`repogate sync --accept-shrink`) wrote it."""
        signature = self._signature()
        if signature is None or signature == self._loaded_signature:
            return False
        records, holds = self.records, self.holds
        self.load()
        if self.problem is not None:
            # What is in memory is still the last known good: keep it and write it back.
            self.records, self.holds = records, holds
            self._entries_dirty = True
        return True

    def hold(self, key: str, hold: Hold) -> None:
        if self.holds.get(key) != hold:
            self.holds[key] = hold
            self._entries_dirty = True

    def release(self, key: str) -> None:
        if self.holds.pop(key, None) is not None:
            self._entries_dirty = True

    def get(self, group: str, fingerprint: str) -> Record | None:
        record = self.records.get(group)
        return record if record is not None and record.fingerprint == fingerprint else None

    def put(self, group: str, record: Record) -> None:
        old = self.records.get(group)
        same = (
            old is not None
            and old.fingerprint == record.fingerprint
            and old.entries == record.entries
        )
        self.records[group] = record
        if same:
            self._touched = True
        else:
            self._entries_dirty = True

    def retain(self, groups: set[str]) -> None:
        """Forget groups that are no longer configured."""
        for name in set(self.records) - groups:
            del self.records[name]
            self._entries_dirty = True
        for name in set(self.holds) - groups:
            del self.holds[name]
            self._entries_dirty = True

    def save_if_due(self, now: float) -> bool:
        due = self._entries_dirty or (self._touched and now - self._saved_at >= self.touch_interval)
        if due:
            self.save()
            self._saved_at = now
        return due

    def save(self) -> None:
        document = {
            "version": STATE_VERSION,
            "groups": {name: record.to_json() for name, record in sorted(self.records.items())},
            "holds": {
                name: {
                    "digest": hold.digest,
                    "count": hold.count,
                    "since": hold.since,
                    "seen": hold.seen,
                }
                for name, hold in sorted(self.holds.items())
            },
        }
        try:
            write_atomically(self.path, json.dumps(document, separators=(",", ":")))
        except OSError as exc:
            self.save_error = exc.strerror or str(exc)
            raise
        self.save_error = None
        self._loaded_signature = self._signature()
        self._entries_dirty = self._touched = False


def _read(path: Path) -> bytes:
    """The file's bytes; OSError for a directory, FIFO or device, which would hang or lie."""
    # O_NONBLOCK: opening a FIFO put in the file's place must not wait for a writer.
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(handle, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise OSError(errno.EINVAL, f"{kind} in its place")
        return file.read()


def set_aside_file(path: Path, now: float | None = None) -> Path:
    """Rename `path` to `<name>.corrupt-<UTC time>` beside it, never over an earlier one."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    base = path.with_name(f"{path.name}{SET_ASIDE_INFIX}{stamp}")
    target, number = base, 1
    while target.exists() or target.is_symlink():
        number += 1
        target = base.with_name(f"{base.name}-{number}")
    os.rename(path, target)
    return target


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` so that a crash leaves the old file or the new, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            temp.write(text)
            temp.flush()
            os.fchmod(temp.fileno(), mode)
            os.fsync(temp.fileno())
        own_like_parent(Path(temp_name))
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def own_like_parent(path: Path) -> None:
    """Files in state_dir belong to its owner: a root `repogate sync` must not leave
    files the service user cannot write later."""
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    with contextlib.suppress(OSError):
        os.chown(path, parent.st_uid, parent.st_gid)
