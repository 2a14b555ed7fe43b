"""File client groups: a local list (lines or JSON), read at every sync."""

from __future__ import annotations

from collections.abc import Mapping

from repogate.addresses import parse_many
from repogate.config import FileClients
from repogate.errors import SourceError
from repogate.sources import SourceResult
from repogate.sources.formats import parse_json, parse_lines

MAX_FILE_BYTES = 256 * 1024 * 1024


class FileSource:
    def __init__(self, group: FileClients, prefix_limits: Mapping[int, int]) -> None:
        self.name = group.name
        self._group = group
        self._limits = prefix_limits

    def signature(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime): unchanged means the daemon can skip a re-read."""
        try:
            stat = self._group.path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def fetch(self) -> SourceResult:
        path = self._group.path
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise SourceError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES} limit")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path} is not UTF-8 text: {exc}") from exc
        if self._group.format == "json":
            raw = parse_json(text, self._group.json_path)
        else:
            raw = parse_lines(text)
        parsed = parse_many(raw.items, raw.locate, self._limits, skip_empty=raw.skip_empty)
        return SourceResult(
            entries=parsed.entries,
            accepted=parsed.accepted,
            rejected_count=parsed.rejected_count,
            rejected_sample=parsed.rejected_sample,
            origin=str(path),
        )
