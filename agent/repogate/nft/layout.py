"""The rule layout of the owned table: port, then destination, then client.

Every forwarded packet passes the hook chain, replies and traffic to anywhere included,
so what it costs there every packet pays. The hook chain tests only the TCP destination
port before it jumps; `gate` tests the destination set; only a packet to a protected
destination on its ports reaches the chain that looks its client up. The flat layout
before this one looked clients up first, in every forwarded packet: perf put 16-20 % of
a full-size download's CPU in nf_tables, 3.7-4.5 % with this one (bench/datapath.py --no-offload).

  forward, output  tcp dport 22 jump gate; tcp dport 443 jump gate
                   (up to MAX_PORT_RULES ports one rule each, measured cheaper than a set
                   lookup; more: one rule with a set of them)
  gate             ip daddr @dest_D_v4 [tcp dport {D's ports}] jump gate_D_v4, per
                   destination set in the flat order; the port test only when D's ports
                   are not all the hook tested
  gate_D_v4        D's rules in their order, less the daddr match and a port match the
                   jump already made: [iifname ...] ip saddr @client_G_v4_addr counter
                   name "allowed_D" accept ... counter name "denied_D" reject (terminal)

Every packet gets the verdict the flat layout gave it: the destination sets are tested
in the same order, a destination's rules in the same order, and a packet no rule of a
destination's chain matches returns to `gate` and goes on to the next set, as it went on
to the next rule before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from repogate.addresses import Family
from repogate.model import DesiredState, RuleSpec
from repogate.nft import names
from repogate.nft.names import jump_comment, rule_comment

MAX_PORT_RULES = 3  # more ports than this: one set lookup beats a test per port


@dataclass(frozen=True)
class GateRule:
    """A rule of a destination's chain: the RuleSpec, and the port match it still needs."""

    spec: RuleSpec
    ports: tuple[int, ...]  # (): the jump into the chain tested exactly these ports


@dataclass(frozen=True)
class DestinationChain:
    """One destination set's chain, and the rule of `gate` that jumps to it."""

    name: str
    family: Family
    destination_set: str
    ports: tuple[int, ...]  # the jump's port test; (): the hook's test already says it
    rules: tuple[GateRule, ...]

    @property
    def comment(self) -> str:
        return f"to {self.name}"


@dataclass(frozen=True)
class Layout:
    hook_ports: tuple[tuple[int, ...], ...]  # one `tcp dport ... jump gate` per entry
    destinations: tuple[DestinationChain, ...]


def gate_layout(rules: Sequence[RuleSpec]) -> Layout:
    grouped: dict[str, list[RuleSpec]] = {}
    for rule in rules:
        grouped.setdefault(rule.destination_set, []).append(rule)
    union = tuple(sorted({port for rule in rules for port in rule.ports}))
    hook_ports = tuple((port,) for port in union) if len(union) <= MAX_PORT_RULES else (union,)
    destinations = []
    for destination_set, specs in grouped.items():
        own = tuple(sorted({port for rule in specs for port in rule.ports}))
        kept = tuple(
            GateRule(spec, () if tuple(sorted(set(spec.ports))) == own else spec.ports)
            for spec in specs
        )
        destinations.append(
            DestinationChain(
                name=names.destination_chain(destination_set),
                family=specs[0].family,
                destination_set=destination_set,
                ports=() if own == union else own,
                rules=kept,
            )
        )
    return Layout(hook_ports, tuple(destinations))


def chain_names(desired: DesiredState) -> list[str]:
    """The chains the desired table holds: jump targets before the chains jumping to them."""
    destinations = [chain.name for chain in gate_layout(desired.rules).destinations]
    nat = [names.NAT_CHAIN] if desired.snat else []
    return [*destinations, names.GATE_CHAIN, *desired.hooks, *nat]


def expected_rule_comments(desired: DesiredState) -> dict[str, tuple[str, ...]]:
    """The comments each owned chain should carry, in order, for the desired rules."""
    digest = desired.rules_digest
    layout = gate_layout(desired.rules)
    comments: dict[str, tuple[str, ...]] = {
        chain.name: tuple(rule_comment(rule.spec.comment, digest) for rule in chain.rules)
        for chain in layout.destinations
    }
    comments[names.GATE_CHAIN] = tuple(
        rule_comment(chain.comment, digest) for chain in layout.destinations
    )
    for hook in desired.hooks:
        comments[hook] = (jump_comment(digest),) * len(layout.hook_ports)
    if desired.snat:
        comments[names.NAT_CHAIN] = tuple(
            rule_comment(rule.comment, digest) for rule in desired.snat
        )
    return comments
