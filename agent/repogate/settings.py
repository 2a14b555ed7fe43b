"""The config's data: frozen dataclasses, checked and built by `repogate.config`.

Durations are seconds (floats); networks are normalised `Entry` values; every
optional key has its default here, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from repogate.addresses import Entry

Hook = Literal["forward", "output"]


@dataclass(frozen=True)
class AgentConfig:
    table: str = "repogate"
    state_dir: Path = Path("/var/lib/repogate")
    hooks: tuple[Hook, ...] = ("forward",)
    # The broadest client network accepted, so a stray 0.0.0.0/0 never opens the gate.
    min_client_prefix_v4: int = 8
    min_client_prefix_v6: int = 32
    # "keep": rules stay when the daemon stops (fail closed); "remove": delete the table.
    on_stop: Literal["keep", "remove"] = "keep"
    # How often the daemon re-reads the whole table to find and repair drift.
    verify_interval: float = 30.0
    log_format: Literal["text", "json"] = "text"
    # Interfaces whose addresses Bitbucket must allow; empty: those with a default route.
    egress_interfaces: tuple[str, ...] = ()
    # How long a failing source's last known good entries stay enforced.
    max_stale: float = 86400.0

    @property
    def prefix_limits(self) -> dict[int, int]:
        return {4: self.min_client_prefix_v4, 6: self.min_client_prefix_v6}


@dataclass(frozen=True)
class Destination:
    name: str
    entries: tuple[Entry, ...]
    ports: tuple[int, ...]


@dataclass(frozen=True)
class StaticClients:
    """A client group whose entries are written in the config."""

    name: str
    entries: tuple[Entry, ...]
    type: Literal["static"] = "static"


@dataclass(frozen=True)
class FileClients:
    """A client group read from a local file at every sync (MDM or inventory exports)."""

    name: str
    path: Path
    format: Literal["lines", "json"] = "lines"
    json_path: str | None = None  # dotted key path to the list inside a JSON document
    interval: float = 10.0  # how often the daemon checks the file for changes
    max_stale: float | None = None  # None: agent.max_stale
    type: Literal["file"] = "file"


ClientGroup = StaticClients | FileClients


@dataclass(frozen=True)
class Rule:
    clients: tuple[str, ...]
    destinations: tuple[str, ...]
    ports: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Grant:
    """One effective permission: members of `group` may reach `destination` on `ports`."""

    group: str
    destination: str
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Config:
    agent: AgentConfig
    destinations: Mapping[str, Destination]
    clients: tuple[ClientGroup, ...]
    rules: tuple[Rule, ...] = ()
    path: Path | None = None

    def max_stale(self, group: ClientGroup) -> float:
        own = getattr(group, "max_stale", None)
        return float(own) if own is not None else self.agent.max_stale

    def group(self, name: str) -> ClientGroup:
        return next(group for group in self.clients if group.name == name)

    def grants(self) -> tuple[Grant, ...]:
        """Rules resolved to (group, destination, ports); without rules, all to all."""
        ports_by_pair: dict[tuple[str, str], set[int]] = {}
        if not self.rules:
            for group in self.clients:
                for destination in self.destinations.values():
                    ports_by_pair[(group.name, destination.name)] = set(destination.ports)
        for rule in self.rules:
            for group_name in rule.clients:
                for destination_name in rule.destinations:
                    offered = set(self.destinations[destination_name].ports)
                    wanted = offered if rule.ports is None else offered & set(rule.ports)
                    if wanted:
                        pair = (group_name, destination_name)
                        ports_by_pair.setdefault(pair, set()).update(wanted)
        return tuple(
            Grant(group, destination, tuple(sorted(ports)))
            for (group, destination), ports in sorted(ports_by_pair.items())
        )
