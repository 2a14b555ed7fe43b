"""The data that flows from config to kernel: desired state, kernel state, and the plan."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from repogate.addresses import Family, NormalisedEntries

Hook = Literal["forward", "output"]


@dataclass(frozen=True)
class SetSpec:
    """A set repogate wants, with the elements it should hold (nft's text form)."""

    name: str
    family: Family
    interval: bool
    elements: frozenset[str]
    owner: str = ""  # "group office" or "destination bitbucket", for logs and audit

    @property
    def nft_type(self) -> str:
        return "ipv4_addr" if self.family == 4 else "ipv6_addr"


@dataclass(frozen=True)
class RuleSpec:
    """One rule of the gate chain: allow a client set, or deny everyone else."""

    family: Family
    destination_set: str
    ports: tuple[int, ...]
    counter: str
    client_set: str | None  # None: the deny rule for the destination
    comment: str
    interfaces: tuple[str, ...] = ()  # allow only packets arriving on these (iifname)

    @property
    def verdict(self) -> Literal["accept", "reject"]:
        return "reject" if self.client_set is None else "accept"


@dataclass(frozen=True)
class SnatSpec:
    """One rule of the NAT chain: admitted flows to a destination leave from `address`."""

    family: Family
    destination_set: str
    ports: tuple[int, ...]
    address: str
    comment: str


@dataclass(frozen=True)
class DesiredState:
    table: str
    hooks: tuple[Hook, ...]
    sets: Mapping[str, SetSpec]
    counters: tuple[str, ...]
    rules: tuple[RuleSpec, ...]
    groups: Mapping[str, NormalisedEntries] = field(default_factory=dict)
    owner: str = ""  # the owner mark's comment (nft.names.owner_comment); "": none
    snat: tuple[SnatSpec, ...] = ()  # [egress] snat = true: the NAT chain's rules

    @functools.cached_property
    def rules_digest(self) -> str:
        """Fingerprint of chains and rules, stamped into rule comments to detect changes."""
        shape: dict[str, object] = {
            # The chain layout (nft.layout) is part of the fingerprint: a table written
            # in another layout differs in its comments, and its rules are rewritten.
            "layout": "port-destination-client",
            "hooks": list(self.hooks),
            "rules": [
                [r.family, r.destination_set, list(r.ports), r.counter, r.client_set]
                + ([list(r.interfaces)] if r.interfaces else [])
                for r in self.rules
            ],
        }
        if self.snat:  # only then: tables written before SNAT existed keep their digest
            shape["snat"] = [
                [s.family, s.destination_set, list(s.ports), s.address] for s in self.snat
            ]
        encoded = json.dumps(shape, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:12]


@dataclass(frozen=True)
class KernelSet:
    name: str
    nft_type: str
    interval: bool
    elements: frozenset[str]


@dataclass(frozen=True)
class KernelChain:
    name: str
    hook: str | None
    chain_type: str | None
    priority: int | None
    policy: str | None
    rule_comments: tuple[str | None, ...]


@dataclass(frozen=True)
class NatRule:
    """A source NAT rule of another table, as far as the egress report needs it."""

    table: str  # "ip nat"
    chain: str
    kind: Literal["snat", "masquerade"]
    address: str | None = None  # snat's translation address (None: a map or range)
    oifname: str | None = None  # the `oifname` it matches, if any
    family: Family | None = None  # the daddr family it matches, if it says (ip/ip6)


@dataclass(frozen=True)
class CounterValue:
    packets: int
    bytes: int


@dataclass(frozen=True)
class KernelTable:
    """What the kernel holds in the owned table, as far as repogate cares."""

    name: str
    sets: Mapping[str, KernelSet]
    chains: Mapping[str, KernelChain]
    counters: Mapping[str, CounterValue]
    # Objects of kinds repogate never creates (maps, quotas, flowtables...): (kind, name).
    others: tuple[tuple[str, str], ...] = ()
    owner: str | None = None  # the owner counter's comment; None: no mark

    @property
    def is_empty(self) -> bool:
        marked = self.owner is not None
        return not (self.sets or self.chains or self.counters or self.others or marked)


@dataclass(frozen=True)
class SetChange:
    """Element changes for one set: `add` and `delete` are the true difference.

    With `replace`, the builder flushes the set and writes its whole desired content
    in the same transaction instead of deleting elements one by one.
    """

    name: str
    add: frozenset[str]
    delete: frozenset[str]
    replace: bool = False


@dataclass(frozen=True)
class Plan:
    """The difference between the kernel and the desired state, as one transaction."""

    create_table: bool = False
    add_sets: tuple[str, ...] = ()
    delete_sets: tuple[str, ...] = ()
    add_counters: tuple[str, ...] = ()
    delete_counters: tuple[str, ...] = ()
    add_chains: tuple[str, ...] = ()
    delete_chains: tuple[str, ...] = ()
    flush_chains: tuple[str, ...] = ()
    delete_others: tuple[tuple[str, str], ...] = ()
    rewrite_rules: bool = False
    set_changes: tuple[SetChange, ...] = ()
    # Write the owner mark (its comment); replace_owner: an old mark goes first.
    owner: str | None = None
    replace_owner: bool = False

    @property
    def is_empty(self) -> bool:
        return not (
            self.create_table
            or self.add_sets
            or self.delete_sets
            or self.add_counters
            or self.delete_counters
            or self.add_chains
            or self.delete_chains
            or self.delete_others
            or self.rewrite_rules
            or self.set_changes
            or self.owner is not None
        )

    @property
    def elements_added(self) -> int:
        return sum(len(change.add) for change in self.set_changes)

    @property
    def elements_deleted(self) -> int:
        return sum(len(change.delete) for change in self.set_changes)
