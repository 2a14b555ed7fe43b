"""The only module that loads libnftables: read the owned table, apply one transaction.

A Backend is a small Protocol so the CLI and tests can hand in the dry-run
recorder instead of the kernel.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from repogate.errors import NftError, NftPermissionError, NftUnavailableError
from repogate.model import CounterValue, KernelTable
from repogate.nft.builders import FAMILY, Json, transaction
from repogate.nft.parse import parse_table

# libnftables reports failures only as text; this is the one phrase that tells a
# missing capability apart from a rejected command.
_EPERM_TEXT = "Operation not permitted"


class Backend(Protocol):
    def read_table(self, table: str) -> KernelTable | None:
        """The owned table as the kernel holds it, or None if it does not exist."""
        ...

    def apply(self, commands: list[Json]) -> float:
        """Run commands as one transaction; return the seconds it took."""
        ...

    def chain_comments(self, table: str, chain: str) -> tuple[str | None, ...] | None:
        """The comments of a chain's rules, in order; None if the chain is missing."""
        ...


class NftBackend:
    """libnftables through Debian's python3-nftables, JSON in and out."""

    def __init__(self, nft: Any = None) -> None:
        if nft is None:
            try:
                import nftables  # noqa: PLC0415 - optional system package, loaded on demand
            except ImportError as exc:
                raise NftUnavailableError(
                    "the libnftables Python bindings are missing: install Debian's "
                    "python3-nftables and run repogate with /usr/bin/python3 "
                    "(or a venv made with --system-site-packages)"
                ) from exc
            try:
                nft = nftables.Nftables()
            except OSError as exc:
                raise NftUnavailableError(f"cannot load libnftables: {exc}") from exc
        nft.set_json_output(True)
        nft.set_handle_output(False)
        self._nft = nft
        # One libnftables context is not thread-safe (its cache is shared): two threads
        # in it at once crash the process. The daemon's jobs run on several threads.
        self._lock = threading.Lock()

    def table_exists(self, table: str) -> bool:
        listing = self._run({"nftables": [{"list": {"tables": {"family": FAMILY}}}]})
        return any(
            item.get("table", {}).get("name") == table
            and item.get("table", {}).get("family") == FAMILY
            for item in listing
        )

    def read_table(self, table: str) -> KernelTable | None:
        if not self.table_exists(table):
            return None
        listing = self._run({"nftables": [{"list": {"table": {"family": FAMILY, "name": table}}}]})
        return parse_table(table, listing)

    def read_counters(self, table: str) -> dict[str, CounterValue]:
        """The table's named counters, without listing any set (cheap at scrape time)."""
        if not self.table_exists(table):
            return {}
        listing = self._run(
            {"nftables": [{"list": {"counters": {"family": FAMILY, "table": table}}}]}
        )
        found: dict[str, CounterValue] = {}
        for item in listing:
            body = item.get("counter")
            if body is not None and body.get("table") == table:
                found[body["name"]] = CounterValue(int(body["packets"]), int(body["bytes"]))
        return found

    def chain_comments(self, table: str, chain: str) -> tuple[str | None, ...] | None:
        if not self.table_exists(table):
            return None
        ref = {"family": FAMILY, "table": table, "name": chain}
        try:
            listing = self._run({"nftables": [{"list": {"chain": ref}}]})
        except NftPermissionError:
            raise
        except NftError:
            return None  # the chain is gone
        return tuple(item["rule"].get("comment") for item in listing if "rule" in item)

    def apply(self, commands: list[Json]) -> float:
        if not commands:
            return 0.0
        started = time.perf_counter()
        self._run(transaction(commands))
        return time.perf_counter() - started

    def _run(self, document: Json) -> list[dict[str, Any]]:
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

    def chain_comments(self, table: str, chain: str) -> tuple[str | None, ...] | None:
        if self.table is None or chain not in self.table.chains:
            return None
        return self.table.chains[chain].rule_comments
