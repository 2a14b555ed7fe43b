"""Last known good entries of dynamic sources, kept on disk so they survive restarts.

Written atomically (temp file, fsync, rename, fsync of the directory), so a crash
or power loss leaves either the old file or the new one. A corrupt or unreadable
file is ignored with a warning: the daemon then falls back to what the kernel holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repogate.addresses import NormalisedEntries

STATE_FILE = "state.json"
STATE_VERSION = 2
log = logging.getLogger(__name__)


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
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        def texts(key: str) -> frozenset[str]:
            values = data.get(key, "")
            if not isinstance(values, str):
                raise ValueError(f"{key} is not a string of entries")
            return frozenset(values.split())

        return cls(
            fingerprint=str(data["fingerprint"]),
            fetched_at=float(data["fetched_at"]),
            origin=str(data.get("origin", "")),
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


class StateStore:
    """Records per client group, loaded once and saved whenever they change.

    Entries are saved as soon as they change; a refresh that only confirms them
    moves `fetched_at` in memory and reaches the disk at most every `touch_interval`
    seconds, so a 100,000-entry list refreshed every ten seconds is not rewritten
    every ten seconds.
    """

    def __init__(self, directory: Path, touch_interval: float = 300.0) -> None:
        self.path = directory / STATE_FILE
        self.records: dict[str, Record] = {}
        self.holds: dict[str, Hold] = {}
        self.touch_interval = touch_interval
        self._loaded_signature: tuple[int, int] | None = None
        self._entries_dirty = False
        self._touched = False
        self._saved_at = 0.0

    def load(self) -> None:
        try:
            self._loaded_signature = self._signature()
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("state file %s unreadable, ignoring it: %s", self.path, exc)
            return
        try:
            document = json.loads(raw)
            if document.get("version") != STATE_VERSION:
                raise ValueError(f"version {document.get('version')!r}")
            self.records = {
                name: Record.from_json(record) for name, record in document["groups"].items()
            }
            self.holds = {
                name: Hold(str(hold["digest"]), int(hold["count"]), float(hold["since"]))
                for name, hold in document.get("holds", {}).items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("state file %s is corrupt, ignoring it: %s", self.path, exc)
            self.records, self.holds = {}, {}

    def _signature(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def reload_if_changed(self) -> bool:
        """Re-read the file if someone else (`repogate sync --accept-shrink`) wrote it."""
        signature = self._signature()
        if signature is None or signature == self._loaded_signature:
            return False
        self.load()
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
                name: {"digest": hold.digest, "count": hold.count, "since": hold.since}
                for name, hold in sorted(self.holds.items())
            },
        }
        write_atomically(self.path, json.dumps(document, separators=(",", ":")))
        self._loaded_signature = self._signature()
        self._entries_dirty = self._touched = False


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
