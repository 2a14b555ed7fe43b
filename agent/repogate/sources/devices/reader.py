"""One inventory as the device groups see it: read when due, kept when failing.

A file is read again when it changed; a list over HTTPS and an MDM when their
interval has passed (an MDM that asked us to wait, not before that). Enrolment
files are re-joined when they change, without asking the MDM again. A failed read
keeps the last good records until the inventory's max_stale and says so
(`failure`, `stale_since`, the log); past it, every device is refused (fail
closed). Shared by every group that names the inventory; safe across threads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from repogate.addresses import Rejected
from repogate.config.schema import Inventory
from repogate.errors import SourceError
from repogate.sources.devices import DeviceRecord, IdentityKind
from repogate.sources.devices.enrolment import Enrolment, enrol, read_enrolments
from repogate.sources.devices.inventory import ParsedInventory, parse_inventory, qualifies
from repogate.sources.devices.join import index

log = logging.getLogger("repogate")
COUNT_TICK = 10.0  # seconds a qualifying count is reused


@dataclass(frozen=True)
class Records:
    """An inventory as last read: its records by identity, and when they were read."""

    by_identity: dict[tuple[IdentityKind, str], DeviceRecord]
    records: tuple[DeviceRecord, ...]
    rejected: tuple[Rejected, ...]
    read_at: float


class InventoryExpiredError(SourceError):
    """Failing past max_stale: its groups refuse every device (fail closed). Not a failed
    read of the group, which would keep the group's own last known good entries."""

    def __init__(self, message: str, records: Records) -> None:
        super().__init__(message)
        self.records = records  # still naming the devices it refuses


class InventoryReader:
    """One inventory, read when due; safe across threads."""

    def __init__(self, inventory: Inventory, max_stale: float, *, needs_macs: bool = False) -> None:
        self.inventory = inventory
        self.max_stale = inventory.max_stale if inventory.max_stale is not None else max_stale
        self.needs_macs = needs_macs  # Intune: fetch MACs device by device
        self._lock = threading.Lock()
        self._last: Records | None = None
        self._source: ParsedInventory | None = None  # before enrolments are joined
        self._source_read_at = float("-inf")
        self._signature: object | None = None
        self._enrolled: object | None = None  # the enrolment files' signature when joined
        self._etag: str | None = None
        self._retry_at = float("-inf")  # a failing remote inventory: not asked before
        self._client: object | None = None  # the MDM session (its token), kept across reads
        self.failure: str | None = None
        self.stale_since: float | None = None  # when the failure began
        self._counted: tuple[object, int, int] | None = None  # (records, tick, count)

    @property
    def last(self) -> Records | None:
        """The records as last read (what `repogate devices` lists as absent)."""
        return self._last

    def qualifying(self, now: float) -> int:
        """How many records qualify now (for status and metrics). Worded reasons cost
        about 1.5 us a record, so the count is kept for COUNT_TICK seconds per read
        instead of redone at every reconcile; ages move far slower than that."""
        last = self._last
        if last is None:
            return 0
        tick = int(now // COUNT_TICK)
        counted = self._counted
        if counted is not None and counted[0] is last and counted[1] == tick:
            return counted[2]
        max_age = self.inventory.max_age
        count = sum(1 for r in last.records if qualifies(r, now=now, max_age=max_age)[0])
        self._counted = (last, tick, count)
        return count

    @property
    def remote(self) -> bool:
        return self.inventory.path is None

    def signature(self) -> object | None:
        """A file's identity and size and time; None for remote inventories."""
        return _file_signature(self.inventory.path) if self.inventory.path is not None else None

    def current(self, now: float) -> Records:
        """The records to judge by now; SourceError once nothing usable is left."""
        with self._lock:
            if self._source_due(now):
                self._read_source(now)
            enrolled = tuple(_file_signature(path) for path in self.inventory.enrolments)
            if self._source is not None and (self._last is None or enrolled != self._enrolled):
                self._join(enrolled, now)
            last = self._last
            if last is None:
                raise SourceError(
                    f"inventory {self.inventory.name}: {self.failure or 'never read'}"
                )
            if self.failure is not None and now - last.read_at >= self.max_stale:
                raise InventoryExpiredError(
                    f"inventory {self.inventory.name}: {self.failure}; "
                    "its last good records are past max_stale",
                    last,
                )
            return last

    def due_in(self, now: float) -> float | None:
        """Seconds until a remote inventory is read again; None for a file (its change
        is seen at the next map read). The device groups are asked again then, so a
        verdict changes one interval after the MDM's, not up to a map interval later."""
        if not self.remote:
            return None
        if self.failure is not None or self._source is None:
            return max(0.0, self._retry_at - now)
        return max(0.0, self._source_read_at + self.inventory.interval - now)

    def _source_due(self, now: float) -> bool:
        if self.failure is not None or self._source is None:
            return now >= self._retry_at
        if not self.remote:
            return self.signature() != self._signature
        return now - self._source_read_at >= self.inventory.interval

    def _read_source(self, now: float) -> None:
        signature = self.signature()
        started = time.monotonic()
        try:
            parsed = self._fetch()
        except SourceError as exc:
            # A vendor's wait counts from its answer, which a long paged read may have
            # reached well after `now`.
            waited = time.monotonic() - started + exc.wait
            self._retry_at = now + max(waited, self.inventory.interval if self.remote else 0.0)
            if self.failure is None:
                self.stale_since = now
                kept = " (keeping its last good records)" if self._last is not None else ""
                log.warning("inventory %s failing%s: %s", self.inventory.name, kept, exc)
            self.failure = str(exc)
            return
        if self.failure is not None:
            log.warning("inventory %s recovered", self.inventory.name)
        self.failure, self.stale_since = None, None
        self._signature = signature
        self._source_read_at = now
        if parsed is not None:
            self._source = parsed
            self._enrolled = None  # join again
        elif self._last is not None:  # 304 Not Modified: the records are fresh again
            self._last = Records(
                self._last.by_identity, self._last.records, self._last.rejected, now
            )

    def _join(self, enrolled: tuple[object, ...], now: float) -> None:
        assert self._source is not None
        joined = self._source
        if self.inventory.enrolments:
            rows: list[Enrolment] = []
            rejected: list[Rejected] = []
            try:
                for path in self.inventory.enrolments:
                    found, bad = read_enrolments(path)
                    rows += found
                    rejected += bad
            except SourceError as exc:
                if self.failure is None:
                    self.stale_since = now
                    log.warning("inventory %s: %s", self.inventory.name, exc)
                self.failure = str(exc)
                return
            merged = enrol(joined, rows, self.inventory.name)
            joined = ParsedInventory(merged.records, (*merged.rejected, *rejected))
        self._enrolled = enrolled
        read_at = self._source_read_at if self._source_read_at > float("-inf") else now
        self._last = Records(index(joined.records), joined.records, joined.rejected, read_at)

    def _fetch(self) -> ParsedInventory | None:
        """The inventory as read now; None: an HTTP list unchanged since the last read."""
        inventory = self.inventory
        if inventory.path is not None:
            try:
                return parse_inventory(inventory.path.read_bytes())
            except OSError as exc:
                raise SourceError(f"cannot read {inventory.path}: {exc.strerror or exc}") from exc
        if inventory.mdm is not None:
            from repogate.sources.devices.mdm import ApiClient, read_mdm  # noqa: PLC0415

            if not isinstance(self._client, ApiClient):
                self._client = ApiClient(inventory.mdm)
            return read_mdm(self._client, inventory.mdm, needs_macs=self.needs_macs)
        from repogate.sources.transport import fetch_url  # noqa: PLC0415 - HTTP only

        assert inventory.http is not None
        response = fetch_url(
            inventory.http, etag=self._etag if self._last else None, last_modified=None
        )
        if response is None:
            return None
        self._etag = response.etag
        return parse_inventory(response.text)


def _file_signature(path: Path) -> object | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
