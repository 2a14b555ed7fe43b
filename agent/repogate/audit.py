"""The audit trail: every change to who may reach the destinations, one JSON line each.

Each line says when, which set (and the group or destination it belongs to),
what was added and removed, and why (start, sync, refresh, revocation, expiry,
reload, drift repair). Lines go to the journal through the log stream, to
`[audit] path` if set (reopened on SIGHUP, so logrotate can move it), and to a
bounded file in state_dir that `repogate status` and `repogate explain` read.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from repogate.addresses import contains, element_order
from repogate.model import DesiredState, Plan
from repogate.state import own_like_parent

log = logging.getLogger("repogate.audit")
RECENT_FILE = "audit.jsonl"
RECENT_MAX_BYTES = 16 * 1024 * 1024  # past this the recent file keeps its newer half
SORT_LIMIT = 10_000


def classify(reason: str, added: bool, removed: bool) -> str:
    """Why a change happened, in the trail's words."""
    if "drift" in reason:
        return "drift repair"
    for word in ("expiry", "reload", "start", "sync", "stop"):
        if word in reason:
            return word
    if removed and not added:
        return "revocation"
    return "refresh"


class AuditLog:
    def __init__(self, state_dir: Path, path: Path | None = None) -> None:
        self.recent_path = state_dir / RECENT_FILE
        self.path = path
        self._handle: IO[str] | None = None

    def record(
        self,
        plan: Plan,
        desired: DesiredState,
        reason: str,
        devices: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Write one line per changed set; return them. `devices` names the device
        (and owner) behind an address, for lines of device groups."""
        lines = self.prepare(plan, desired, reason, devices)
        self._write(lines)
        return lines

    def prepare(
        self,
        plan: Plan,
        desired: DesiredState,
        reason: str,
        devices: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """The lines for a change, without writing them (see `write`)."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
        lines: list[dict[str, Any]] = []
        for change in plan.set_changes:
            spec = desired.sets.get(change.name)
            owner = spec.owner if spec is not None else ""
            added, removed = _listed(change.add), _listed(change.delete)
            lines.append(
                {
                    "time": stamp,
                    "timestamp": round(now, 3),
                    "table": desired.table,
                    "set": change.name,
                    "owner": owner,
                    "added": added,
                    "removed": removed,
                    "reason": classify(reason, bool(added), bool(removed)),
                    "detail": reason,
                }
            )
            named = {e: devices[e] for e in (*added, *removed) if devices and e in devices}
            if named:
                lines[-1]["devices"] = named
        return lines

    def write(self, lines: list[dict[str, Any]], text: str | None = None) -> None:
        """Write prepared lines (once the change they describe is in the kernel);
        `text` is their serialisation if already made (see `serialise`)."""
        self._write(lines, text)

    @staticmethod
    def serialise(lines: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)

    def record_event(self, table: str, event: str, reason: str) -> None:
        """A change that is not a set's (the table deleted on stop or by teardown)."""
        now = time.time()
        self._write(
            [
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
                    "timestamp": round(now, 3),
                    "table": table,
                    "event": event,
                    "reason": classify(reason, False, True),
                    "detail": reason,
                }
            ]
        )

    def _write(self, lines: list[dict[str, Any]], text: str | None = None) -> None:
        if not lines:
            return
        text = text if text is not None else self.serialise(lines)
        if log.isEnabledFor(logging.INFO):
            for line in text.splitlines():
                log.info("audit: %s", line)
        try:
            _append(self.recent_path, text)
            _trim(self.recent_path)
        except OSError as exc:
            log.warning("cannot write the audit trail to %s: %s", self.recent_path, exc)
        if self.path is not None:
            try:
                if self._handle is None:
                    self._handle = _open_append(self.path)
                self._handle.write(text)
                self._handle.flush()
            except OSError as exc:
                log.warning("cannot write the audit trail to %s: %s", self.path, exc)
                self.reopen()

    def reopen(self) -> None:
        """Close the file so the next line opens it anew (after logrotate moved it)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
            self._handle = None

    def recent(self, count: int = 10) -> list[dict[str, Any]]:
        return list(self._lines())[-count:]

    def trail(self, address: str) -> list[dict[str, Any]]:
        """Every recorded change that added or removed an entry covering `address`."""
        ip = ipaddress.ip_address(address)
        found = []
        for line in self._lines():
            entries = [*line.get("added", []), *line.get("removed", [])]
            if any(contains(entry, ip) for entry in entries):
                found.append(line)
        return found

    def _lines(self) -> Iterator[dict[str, Any]]:
        try:
            handle = self.recent_path.open(encoding="utf-8")
        except OSError:
            return
        with handle:
            for raw in handle:
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue  # a torn last line after a crash


def _listed(elements: frozenset[str]) -> list[str]:
    """Sorted for people when short; a cold load of 100k entries is written as it comes."""
    return sorted(elements, key=element_order) if len(elements) <= SORT_LIMIT else list(elements)


def _open_append(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    own_like_parent(path)
    return os.fdopen(fd, "a", encoding="utf-8")


def _append(path: Path, text: str) -> None:
    with _open_append(path) as handle:
        handle.write(text)


def _trim(path: Path) -> None:
    if path.stat().st_size <= RECENT_MAX_BYTES:
        return
    data = path.read_bytes()
    keep = data[len(data) // 2 :]
    keep = keep[keep.find(b"\n") + 1 :]
    temp = path.with_suffix(".tmp")
    temp.write_bytes(keep)
    own_like_parent(temp)
    os.replace(temp, path)
