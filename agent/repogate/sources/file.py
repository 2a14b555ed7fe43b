"""File client groups: a local list (lines or JSON), read at every sync.

The daemon re-reads a file only when its signature changes, so the signature must
change with everything that decides whether the daemon can still read it, not only
with its content: a chmod 000 or a chown must show up as a failure at the next
refresh, not after the file next changes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from repogate.addresses import parse_many
from repogate.config import FileClients
from repogate.errors import SourceError
from repogate.sources import SourceResult
from repogate.sources.formats import parse_json, parse_lines, refuse_if_nothing_valid

MAX_FILE_BYTES = 256 * 1024 * 1024
# faccessat(AT_EACCESS): ask with the ids the read will use, not the real ones.
_EFFECTIVE = os.access in os.supports_effective_ids

FileSignature = tuple[int, int, int, int, int, int, bool]


class FileSource:
    def __init__(self, group: FileClients, prefix_limits: Mapping[int, int]) -> None:
        self.name = group.name
        self._group = group
        self._limits = prefix_limits

    def signature(self) -> FileSignature | None:
        """Unchanged means the daemon may skip a re-read; None means always read.

        (device, inode) changes when the file is replaced, size and mtime when it is
        written, ctime when its mode, owner or ACL changes (the mode too, as ctime ticks
        coarsely: a chmod 000 right after a write), and the access check when this
        process may no longer read it for any other reason. A missing file, one this
        process cannot stat, or a directory or FIFO in its place gives None, so every
        refresh tries it and reports why it fails.
        """
        path = self._group.path
        try:
            info = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        readable = os.access(path, os.R_OK, effective_ids=_EFFECTIVE)
        return (
            info.st_dev,
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            info.st_ctime_ns,
            info.st_mode,
            readable,
        )

    def fetch(self) -> SourceResult:
        path = self._group.path
        try:
            text = read_text(path, MAX_FILE_BYTES)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path} is not UTF-8 text: {exc}") from exc
        if self._group.format == "json":
            raw = parse_json(text, self._group.json_path)
        else:
            raw = parse_lines(text)
        parsed = parse_many(raw.items, raw.locate, self._limits, skip_empty=raw.skip_empty)
        first = parsed.rejected_sample[0] if parsed.rejected_sample else ""
        refuse_if_nothing_valid(str(path), parsed.accepted, parsed.rejected_count, first)
        return SourceResult(
            entries=parsed.entries,
            accepted=parsed.accepted,
            rejected_count=parsed.rejected_count,
            rejected_sample=parsed.rejected_sample,
            origin=str(path),
        )


def read_text(path: Path, limit: int) -> str:
    """A regular file's text, at most `limit` bytes (SourceError beyond).

    Opened without blocking and checked with fstat, so a FIFO in the list's place fails
    at once instead of hanging the refresh; the limit is checked on what is read (one
    byte more than allowed), not on a size a growing file has already outgrown.
    """
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(handle, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise SourceError(f"{path}: over the {limit} bytes limit")
    return data.decode("utf-8")
