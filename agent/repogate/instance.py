"""This repogate's identity and the table it last enforced, kept in state_dir.

The id is written into the owned table as its owner mark (a counter comment, see
`nft.names.OWNER_COUNTER`), which is how repogate proves a table is its own; the
table name is how a rename of `agent.table` is carried out by whichever path runs
next (the daemon or `repogate sync`), so the old table never stays gating traffic.
Kept apart from state.json: losing the last known good entries must not also lose
the proof of ownership.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from repogate.state import write_atomically

INSTANCE_FILE = "instance.json"
log = logging.getLogger("repogate")


@dataclass
class Instance:
    id: str
    table: str | None  # the table this instance last enforced; None: none yet
    path: Path

    @classmethod
    def load(cls, state_dir: Path) -> Instance:
        """Read state_dir/instance.json; a new id if it is missing or unusable.

        A corrupt file is set aside (renamed), never fatal: the table it marked is
        then refused as another instance's until `repogate sync --adopt`.
        """
        path = state_dir / INSTANCE_FILE
        try:
            document = json.loads(path.read_bytes().decode("utf-8"))
            found = document["id"]
            table = document.get("table")
            if not isinstance(found, str) or not found or not isinstance(table, str | None):
                raise ValueError("unexpected shape")
            return cls(found, table, path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = path.with_name(f"{INSTANCE_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                path.rename(aside)
                log.warning("%s is unusable (%s): set aside as %s", path, exc, aside.name)
            except OSError as rename_error:
                log.warning("%s is unusable (%s) and cannot be moved: %s", path, exc, rename_error)
        return cls(secrets.token_hex(8), None, path)

    def save(self) -> None:
        write_atomically(self.path, json.dumps({"id": self.id, "table": self.table}) + "\n")
