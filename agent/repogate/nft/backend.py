"""The only module that loads libnftables: read the owned table, apply one transaction.

A Backend is a small Protocol so the CLI and tests can hand in the dry-run
recorder instead of the kernel.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from repogate.errors import NftError, NftPermissionError, NftUnavailableError
from repogate.model import CounterValue, KernelTable, NatRule
from repogate.nft.builders import FAMILY, Json, transaction
from repogate.nft.parse import parse_nat_rules, parse_table
from repogate.nft.query import NetlinkQuery

# libnftables reports failures only as text; this is the one phrase that tells a
# missing capability apart from a rejected command.
_EPERM_TEXT = "Operation not permitted"


class TableWatch(Protocol):
    """A running report of other processes' commits to one table (nft.monitor)."""

    @property
    def running(self) -> bool: ...

    def set_table(self, table: str) -> None: ...

    def close(self) -> None: ...


class Backend(Protocol):
    def read_table(self, table: str) -> KernelTable | None:
        """The owned table as the kernel holds it, or None if it does not exist."""
        ...

    def apply(self, commands: list[Json]) -> float:
        """Run commands as one transaction; return the seconds it took."""
        ...

    def read_counters(self, table: str) -> dict[str, CounterValue]:
        """The table's named counters ({} without the table), for the metrics scrape."""
        ...

    def generation(self) -> int:
        """The ruleset's generation id: unchanged means nothing was committed since."""
        ...

    def nat_rules(self, exclude: str) -> list[NatRule]:
        """SNAT and masquerade in other tables' postrouting chains (the egress report)."""
        ...

    def watch(self, table: str, on_foreign_change: Callable[[str], None]) -> TableWatch | None:
        """Report other processes' commits to `table` as they happen; None where this
        backend cannot (the caller then watches the generation id instead)."""
        ...


class NftBackend:
    """libnftables through Debian's python3-nftables for the table and transactions;
    plain netlink (nft.query) for everything that must not list set elements.

    Reads and applies use separate libnftables contexts: a context keeps the cache
    its last command built, and an apply right after a full listing on the same
    context took ~130 ms instead of ~1.4 ms at 100,000 elements (bench/nft_layer.py).
    """

    def __init__(
        self,
        context_factory: Callable[[], Any] | None = None,
        query: NetlinkQuery | None = None,
    ) -> None:
        factory = context_factory or _libnftables_context
        self._reader = _Context(factory())
        self._applier = _Context(factory())
        self._query = query or NetlinkQuery()
        self._terse: _Context | None = None  # the egress report's ruleset reads
        # Thread ids that committed through this backend, for TableMonitor(own_tasks=):
        # the kernel names the committing thread, which may have ended by then.
        self.committing_tasks: set[int] = set()

    def generation(self) -> int:
        """The ruleset's generation id (changes with every commit), read without listing."""
        return self._query.generation()

    def table_exists(self, table: str) -> bool:
        return self._query.table_exists(table)

    def read_table(self, table: str) -> KernelTable | None:
        if not self.table_exists(table):
            return None
        listing = self._reader.run(
            {"nftables": [{"list": {"table": {"family": FAMILY, "name": table}}}]}
        )
        return parse_table(table, listing)

    def read_counters(self, table: str) -> dict[str, CounterValue]:
        """The table's named counters, without listing any set (cheap at scrape time):
        `list counters` in nft 1.0.6 still loads every element first."""
        return self._query.counters(table)

    def chain_comments(self, table: str, chain: str) -> tuple[str | None, ...] | None:
        return self._query.chain_comments(table, chain)

    def nat_rules(self, exclude: str) -> list[NatRule]:
        """A terse `list ruleset` (no set elements) in its own context, read on demand:
        at start, on link events and for `status`, never per packet or per reconcile."""
        if self._terse is None:
            nft = _libnftables_context()
            nft.set_terse_output(True)
            self._terse = _Context(nft)
        listing = self._terse.run({"nftables": [{"list": {"ruleset": None}}]})
        return parse_nat_rules(listing, exclude)

    def watch(self, table: str, on_foreign_change: Callable[[str], None]) -> TableWatch | None:
        from repogate.nft.monitor import TableMonitor  # noqa: PLC0415 - daemon only

        monitor = TableMonitor(table, on_foreign_change, own_tasks=self.committing_tasks)
        monitor.start()  # NftError / NftPermissionError: the caller falls back
        return monitor

    def apply(self, commands: list[Json]) -> float:
        if not commands:
            return 0.0
        started = time.perf_counter()
        self.committing_tasks.add(threading.get_native_id())
        self._applier.run(transaction(commands))
        return time.perf_counter() - started


def _libnftables_context() -> Any:
    try:
        import nftables  # noqa: PLC0415 - optional system package, loaded on demand
    except ImportError as exc:
        raise NftUnavailableError(
            "the libnftables Python bindings are missing: install Debian's "
            "python3-nftables and run repogate with /usr/bin/python3 "
            "(or a venv made with --system-site-packages)"
        ) from exc
    try:
        return nftables.Nftables()
    except OSError as exc:
        raise NftUnavailableError(f"cannot load libnftables: {exc}") from exc


class _Context:
    """One libnftables context and its lock: a context is not thread-safe (its cache
    is shared), and two threads in it at once crash the process."""

    def __init__(self, nft: Any) -> None:
        nft.set_json_output(True)
        nft.set_handle_output(False)
        self._nft = nft
        self._lock = threading.Lock()

    def run(self, document: Json) -> list[dict[str, Any]]:
        text = json.dumps(document)
        with self._lock:
            rc, output, error = self._nft.cmd(text)
        if rc != 0:
            message = " ".join(str(error).split()) or f"libnftables returned {rc}"
            if _EPERM_TEXT in message:
                raise NftPermissionError(
                    "nftables refused: operation not permitted (repogate needs root or "
                    "CAP_NET_ADMIN in this network namespace)"
                )
            raise NftError(f"nftables rejected the transaction: {message}")
        if not output:
            return []
        try:
            items: list[dict[str, Any]] = json.loads(output)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise NftError(f"unexpected output from libnftables: {output[:200]!r}") from exc
        return items


@dataclass
class RecordingBackend:
    """A dry-run backend: starts from a given table and records transactions."""

    table: KernelTable | None = None
    transactions: list[list[Json]] = field(default_factory=list)

    def read_table(self, table: str) -> KernelTable | None:
        return self.table

    def apply(self, commands: list[Json]) -> float:
        if commands:
            self.transactions.append(commands)
        return 0.0

    def read_counters(self, table: str) -> dict[str, CounterValue]:
        return dict(self.table.counters) if self.table is not None else {}

    def generation(self) -> int:
        return len(self.transactions)

    def nat_rules(self, exclude: str) -> list[NatRule]:
        return []

    def watch(self, table: str, on_foreign_change: Callable[[str], None]) -> TableWatch | None:
        return None
