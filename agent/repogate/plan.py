"""Pure planning: config -> desired state -> the minimal diff against the kernel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from repogate.addresses import Entry, Family, NormalisedEntries, collapse, parse_entry
from repogate.config import Config
from repogate.model import (
    CounterValue,
    DesiredState,
    KernelChain,
    KernelSet,
    KernelTable,
    Plan,
    RuleSpec,
    SetChange,
    SetSpec,
    SnatSpec,
)
from repogate.nft import names
from repogate.nft.layout import chain_names, expected_rule_comments

FAMILIES: tuple[Family, ...] = (4, 6)

# Cost model for interval sets, measured with Debian's nft 1.0.6 (docs/benchmarks.md):
# nft re-walks the whole set for every interval element it deletes (0.5-1.7 us x set
# size each, growing with the size), while a flush and refill inside the same
# transaction costs ~10 us per element: past ~10 deletions a refill is cheaper.
DELETE_COST_PER_SET_ELEMENT = 1.0e-6
REFILL_COST_PER_ELEMENT = 1.0e-5


def desired_state(
    config: Config,
    group_entries: Mapping[str, NormalisedEntries],
    destination_entries: Mapping[str, NormalisedEntries] | None = None,
    owner: str = "",
) -> DesiredState:
    """The table repogate wants for this config and what its sources returned.

    `destination_entries` are what DNS and feeds add to a destination's own networks.
    """
    sets: dict[str, SetSpec] = {}
    groups: dict[str, NormalisedEntries] = {}
    for group in config.clients:
        entries = group_entries[group.name]
        groups[group.name] = entries
        for family in FAMILIES:
            addresses = entries.addresses_v4 if family == 4 else entries.addresses_v6
            networks = entries.networks_v4 if family == 4 else entries.networks_v6
            for kind, elements in zip(names.SET_KINDS, (addresses, networks), strict=True):
                name = names.client_set(group.name, family, kind)
                sets[name] = SetSpec(name, family, kind == "net", elements, f"group {group.name}")
    counters: list[str] = []
    rules: list[RuleSpec] = []
    grants = config.grants()
    for destination in sorted(config.destinations.values(), key=lambda d: d.name):
        counters += [
            names.counter(destination.name, "allowed"),
            names.counter(destination.name, "denied"),
        ]
        dynamic = (destination_entries or {}).get(destination.name)
        collapsed = destination_elements(destination.entries, dynamic)
        for family in FAMILIES:
            dest_set = names.destination_set(destination.name, family)
            label = f"destination {destination.name}"
            sets[dest_set] = SetSpec(dest_set, family, True, collapsed[family], label)
            for grant in grants:
                if grant.destination != destination.name:
                    continue
                interfaces = config.group(grant.group).interfaces
                for kind in names.SET_KINDS:
                    client_set = names.client_set(grant.group, family, kind)
                    rules.append(
                        RuleSpec(
                            family=family,
                            destination_set=dest_set,
                            ports=grant.ports,
                            counter=names.counter(destination.name, "allowed"),
                            client_set=client_set,
                            comment=f"allow {grant.group} to {destination.name}",
                            interfaces=interfaces,
                        )
                    )
            rules.append(
                RuleSpec(
                    family=family,
                    destination_set=dest_set,
                    ports=destination.ports,
                    counter=names.counter(destination.name, "denied"),
                    client_set=None,
                    comment=f"refuse others to {destination.name}",
                )
            )
    return DesiredState(
        table=config.agent.table,
        hooks=config.agent.hooks,
        sets=sets,
        counters=tuple(counters),
        rules=tuple(rules),
        groups=groups,
        owner=owner,
        snat=snat_rules(config),
    )


def snat_rules(config: Config) -> tuple[SnatSpec, ...]:
    """With `[egress] snat`, every flow to a protected destination on its gated ports
    leaves from the declared address of its family. Only admitted flows get this far:
    the gate rejected the rest in the forward (and output) hook."""
    egress = config.egress
    if not egress.snat:
        return ()
    found: list[SnatSpec] = []
    for destination in sorted(config.destinations.values(), key=lambda d: d.name):
        for family in FAMILIES:
            address = egress.address(family)
            if address is None:
                continue
            found.append(
                SnatSpec(
                    family=family,
                    destination_set=names.destination_set(destination.name, family),
                    ports=destination.ports,
                    address=address,
                    comment=f"egress {destination.name} from {address}",
                )
            )
    return tuple(found)


def enforced_entries(current: KernelTable | None, group: str) -> NormalisedEntries:
    """What the kernel enforces for a group now: the fallback when its source fails."""

    def held(family: Family, kind: names.SetKind) -> frozenset[str]:
        if current is None:
            return frozenset()
        kernel_set = current.sets.get(names.client_set(group, family, kind))
        return kernel_set.elements if kernel_set is not None else frozenset()

    return NormalisedEntries(held(4, "addr"), held(6, "addr"), held(4, "net"), held(6, "net"))


def destination_elements(
    entries: Iterable[Entry], dynamic: NormalisedEntries | None = None
) -> dict[Family, frozenset[str]]:
    """Addresses and networks of a destination as one collapsed interval set per family.

    An address inside a listed network would overlap it, which nft rejects, so
    addresses are treated as /32 and /128 networks and collapsed together.
    """
    blocks: dict[Family, list[tuple[int, int]]] = {4: [], 6: []}
    for entry in entries:
        blocks[entry.family].append((entry.start, entry.prefixlen))
    if dynamic is not None:
        for texts in (
            dynamic.addresses_v4 | dynamic.networks_v4,
            dynamic.addresses_v6 | dynamic.networks_v6,
        ):
            for text in texts:
                entry = parse_entry(text)
                blocks[entry.family].append((entry.start, entry.prefixlen))

    return {
        family: frozenset(entry.text for entry in collapse(family, blocks[family]))
        for family in FAMILIES
    }


def expected_table(desired: DesiredState) -> KernelTable:
    """The kernel's table once `desired` is applied: a daemon's model after a commit.

    Diffing against this instead of re-reading the kernel keeps a reconcile's cost
    proportional to the change, not to the size of the lists.
    """
    comments = expected_rule_comments(desired)
    chains = {}
    for name, rule_comments in comments.items():
        base = names.base_chain(name)
        chains[name] = KernelChain(
            name=name,
            hook=base.hook if base else None,
            chain_type=base.chain_type if base else None,
            priority=base.priority if base else None,
            policy="accept" if base else None,
            rule_comments=rule_comments,
        )
    return KernelTable(
        name=desired.table,
        sets={
            name: KernelSet(name, spec.nft_type, spec.interval, spec.elements)
            for name, spec in desired.sets.items()
        },
        chains=chains,
        counters={name: CounterValue(0, 0) for name in desired.counters},
        owner=desired.owner or None,
    )


def chain_matches(chain: KernelChain, name: str) -> bool:
    """Whether an existing chain is the kind repogate wants under this name."""
    base = names.base_chain(name)
    if base is None:
        return chain.hook is None
    return (
        chain.hook == base.hook
        and chain.chain_type == base.chain_type
        and chain.priority == base.priority
        and chain.policy == "accept"
    )


def should_replace_interval(current_size: int, desired_size: int, deletions: int) -> bool:
    """Whether flushing and refilling an interval set beats deleting elements one by one."""
    if deletions < 2:
        return False
    delete_cost = deletions * current_size * DELETE_COST_PER_SET_ELEMENT
    return delete_cost > desired_size * REFILL_COST_PER_ELEMENT


def diff(desired: DesiredState, current: KernelTable | None) -> Plan:
    """The minimal transaction turning `current` into `desired`.

    Elements change only by element adds and deletes (or a refill inside the same
    transaction); sets, counters and chains are created or removed only when the
    config's shape changed, and rules are rewritten only when their fingerprint differs.
    """
    wanted_chains = chain_names(desired)
    if current is None:
        return Plan(
            create_table=True,
            add_sets=tuple(desired.sets),
            add_counters=desired.counters,
            add_chains=tuple(wanted_chains),
            rewrite_rules=True,
            set_changes=tuple(
                SetChange(spec.name, spec.elements, frozenset())
                for spec in desired.sets.values()
                if spec.elements
            ),
            owner=desired.owner or None,
        )

    recreate_sets = {
        name
        for name, spec in desired.sets.items()
        if name in current.sets
        and (current.sets[name].nft_type, current.sets[name].interval)
        != (spec.nft_type, spec.interval)
    }
    add_sets = [name for name in desired.sets if name not in current.sets or name in recreate_sets]
    delete_sets = sorted(
        name for name in current.sets if name not in desired.sets or name in recreate_sets
    )
    add_counters = [name for name in desired.counters if name not in current.counters]
    delete_counters = sorted(set(current.counters) - set(desired.counters))

    # A chain of the wrong kind cannot change in place: a base chain of another hook, or
    # a regular chain (gate, gate_*) someone made a base chain, is deleted and re-added.
    recreate_chains: set[str] = {
        name
        for name in wanted_chains
        if name in current.chains and not chain_matches(current.chains[name], name)
    }
    add_chains = [
        name for name in wanted_chains if name not in current.chains or name in recreate_chains
    ]
    delete_chains = sorted(
        name for name in current.chains if name not in wanted_chains or name in recreate_chains
    )

    expected = expected_rule_comments(desired)
    rules_differ = any(
        name not in current.chains or current.chains[name].rule_comments != comments
        for name, comments in expected.items()
    )
    rewrite_rules = bool(rules_differ or delete_sets or delete_counters or add_chains)
    rewrite_rules = rewrite_rules or bool(delete_chains) or bool(current.others)
    flush_chains = tuple(sorted(current.chains)) if rewrite_rules else ()

    changes: list[SetChange] = []
    for name, spec in desired.sets.items():
        if name in add_sets:
            if spec.elements:
                changes.append(SetChange(name, spec.elements, frozenset()))
            continue
        held = current.sets[name].elements
        to_add = spec.elements - held
        to_delete = held - spec.elements
        if not (to_add or to_delete):
            continue
        if spec.interval and should_replace_interval(len(held), len(spec.elements), len(to_delete)):
            changes.append(SetChange(name, to_add, to_delete, replace=True))
        else:
            changes.append(SetChange(name, to_add, to_delete))

    return Plan(
        create_table=False,
        add_sets=tuple(add_sets),
        delete_sets=tuple(delete_sets),
        add_counters=tuple(add_counters),
        delete_counters=tuple(delete_counters),
        add_chains=tuple(add_chains),
        delete_chains=tuple(delete_chains),
        flush_chains=flush_chains,
        delete_others=current.others,
        rewrite_rules=rewrite_rules,
        set_changes=tuple(changes),
        owner=desired.owner if desired.owner and desired.owner != current.owner else None,
        replace_owner=bool(desired.owner) and current.owner not in (None, desired.owner),
    )
