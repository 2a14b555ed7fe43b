"""Pure builders: a Plan and a DesiredState in, libnftables JSON commands out.

Nothing here talks to the kernel, so the whole transaction can be unit-tested and
printed by `sync --dry-run`. The order of commands inside the one transaction
matters: rules are flushed before the sets and counters they reference are
deleted, and element deletes come before adds so collapsed intervals never
overlap what they replace.
"""

from __future__ import annotations

from typing import Any

from repogate.model import DesiredState, Plan, SetChange, SetSpec, SnatSpec
from repogate.nft import names
from repogate.nft.layout import DestinationChain, GateRule, gate_layout
from repogate.nft.names import jump_comment, rule_comment

Json = dict[str, Any]
FAMILY = "inet"
JSON_SCHEMA_VERSION = 1


def transaction(commands: list[Json]) -> Json:
    """Wrap commands as one libnftables JSON batch (one kernel transaction)."""
    return {"nftables": [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}, *commands]}


def build_plan(plan: Plan, desired: DesiredState) -> list[Json]:
    table = desired.table
    commands: list[Json] = []
    if plan.create_table:
        commands.append({"add": {"table": {"family": FAMILY, "name": table}}})
    for name in plan.flush_chains:
        commands.append({"flush": {"chain": _ref(table, name)}})
    for name in plan.delete_chains:
        commands.append({"delete": {"chain": _ref(table, name)}})
    for kind, name in plan.delete_others:  # maps, quotas... repogate never creates
        commands.append({"delete": {kind: _ref(table, name)}})
    for name in plan.delete_sets:
        commands.append({"delete": {"set": _ref(table, name)}})
    for name in plan.delete_counters:
        commands.append({"delete": {"counter": _ref(table, name)}})
    commands += build_owner(table, plan)  # first, as render_boot writes it: same listing
    for name in plan.add_counters:
        commands.append({"add": {"counter": _ref(table, name)}})
    for name in plan.add_sets:
        commands.append({"add": {"set": build_set(table, desired.sets[name])}})
    for change in plan.set_changes:
        commands += build_set_change(table, desired.sets[change.name], change)
    for name in plan.add_chains:
        commands.append({"add": {"chain": build_chain(table, name)}})
    if plan.rewrite_rules:
        commands += build_rules(desired)
    return commands


def build_owner(table: str, plan: Plan) -> list[Json]:
    """The owner mark; a counter's comment cannot change in place, so a new mark
    replaces the old one within the transaction."""
    if plan.owner is None:
        return []
    owner = _ref(table, names.OWNER_COUNTER)
    commands: list[Json] = [{"delete": {"counter": owner}}] if plan.replace_owner else []
    return [*commands, {"add": {"counter": {**owner, "comment": plan.owner}}}]


def build_set(table: str, spec: SetSpec) -> Json:
    body: Json = {**_ref(table, spec.name), "type": spec.nft_type}
    if spec.interval:
        body["flags"] = ["interval"]
    return body


def build_set_change(table: str, spec: SetSpec, change: SetChange) -> list[Json]:
    ref = _ref(table, spec.name)
    commands: list[Json] = []
    if change.replace:
        # Flush and refill in the same transaction: no packet ever sees the set empty.
        commands.append({"flush": {"set": ref}})
        if spec.elements:
            commands.append({"add": {"element": {**ref, "elem": _elements(spec.elements, True)}}})
        return commands
    if change.delete:
        elements = _elements(change.delete, spec.interval)
        commands.append({"delete": {"element": {**ref, "elem": elements}}})
    if change.add:
        commands.append({"add": {"element": {**ref, "elem": _elements(change.add, spec.interval)}}})
    return commands


def build_chain(table: str, name: str) -> Json:
    chain: Json = _ref(table, name)
    base = names.base_chain(name)
    if base is not None:
        chain.update(
            {"type": base.chain_type, "hook": base.hook, "prio": base.priority, "policy": "accept"}
        )
    return chain


def build_rules(desired: DesiredState) -> list[Json]:
    """Every rule of the owned chains in the layout nft.layout describes."""
    table = desired.table
    digest = desired.rules_digest
    layout = gate_layout(desired.rules)
    commands: list[Json] = []
    for chain in layout.destinations:
        for rule in chain.rules:
            commands.append({"add": {"rule": build_rule(table, chain.name, rule, digest)}})
    for chain in layout.destinations:
        commands.append({"add": {"rule": build_dispatch(table, chain, digest)}})
    for hook in desired.hooks:
        for ports in layout.hook_ports:
            jump = {
                **_chain_ref(table, hook),
                "expr": [_ports(ports), {"jump": {"target": names.GATE_CHAIN}}],
                "comment": jump_comment(digest),
            }
            commands.append({"add": {"rule": jump}})
    for snat in desired.snat:
        commands.append({"add": {"rule": build_snat(table, snat, digest)}})
    return commands


def build_dispatch(table: str, chain: DestinationChain, digest: str) -> Json:
    """The rule of `gate` sending packets to one destination set into its chain."""
    protocol = "ip" if chain.family == 4 else "ip6"
    expr = [_match(protocol, "daddr", f"@{chain.destination_set}")]
    if chain.ports:
        expr.append(_ports(chain.ports))
    return {
        **_chain_ref(table, names.GATE_CHAIN),
        "expr": [*expr, {"jump": {"target": chain.name}}],
        "comment": rule_comment(chain.comment, digest),
    }


def build_snat(table: str, rule: SnatSpec, digest: str) -> Json:
    protocol = "ip" if rule.family == 4 else "ip6"
    return {
        **_chain_ref(table, names.NAT_CHAIN),
        "expr": [
            _match(protocol, "daddr", f"@{rule.destination_set}"),
            _ports(rule.ports),
            {"snat": {"family": protocol, "addr": rule.address}},
        ],
        "comment": rule_comment(rule.comment, digest),
    }


def build_rule(table: str, chain: str, rule: GateRule, digest: str) -> Json:
    """A rule of a destination's chain: the jump into it already matched the destination."""
    spec = rule.spec
    protocol = "ip" if spec.family == 4 else "ip6"
    expr: list[Json] = []
    if spec.interfaces:
        names_: Any = (
            spec.interfaces[0] if len(spec.interfaces) == 1 else {"set": list(spec.interfaces)}
        )
        expr.append({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": names_}})
    if spec.client_set is not None:
        expr.append(_match(protocol, "saddr", f"@{spec.client_set}"))
    if rule.ports:
        expr.append(_ports(rule.ports))
    elif spec.verdict == "reject":
        # A TCP reset needs TCP in the rule; nft would add this test itself, and
        # writing it keeps the transaction, `render` and the kernel's listing alike.
        expr.append({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}})
    expr.append({"counter": spec.counter})
    if spec.verdict == "accept":
        expr.append({"accept": None})
    else:
        # A TCP reset makes git fail at once with "connection refused" instead of hanging.
        expr.append({"reject": {"type": "tcp reset"}})
    return {
        **_chain_ref(table, chain),
        "expr": expr,
        "comment": rule_comment(spec.comment, digest),
    }


def build_delete_table(table: str) -> list[Json]:
    return [{"delete": {"table": {"family": FAMILY, "name": table}}}]


def _match(protocol: str, field: str, right: Any) -> Json:
    left = {"payload": {"protocol": protocol, "field": field}}
    return {"match": {"op": "==", "left": left, "right": right}}


def _ports(ports: tuple[int, ...]) -> Json:
    right: Any = ports[0] if len(ports) == 1 else {"set": list(ports)}
    return _match("tcp", "dport", right)


def _elements(elements: frozenset[str], interval: bool) -> list[Any]:
    if not interval:  # hash sets hold single addresses: nft takes the text as it is
        return list(elements)
    return [_element(text) for text in elements]


def _element(text: str) -> Any:
    if "/" in text:
        address, _, length = text.partition("/")
        return {"prefix": {"addr": address, "len": int(length)}}
    if "-" in text:  # a range someone added by hand, listed by nft.parse as "low-high"
        low, _, high = text.partition("-")
        return {"range": [low, high]}
    return text


def _ref(table: str, name: str) -> Json:
    return {"family": FAMILY, "table": table, "name": name}


def _chain_ref(table: str, chain: str) -> Json:
    return {"family": FAMILY, "table": table, "chain": chain}
