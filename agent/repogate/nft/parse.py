"""Turn libnftables' JSON listing of the owned table into a KernelTable (pure)."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from repogate.addresses import Family
from repogate.model import CounterValue, KernelChain, KernelSet, KernelTable, NatRule
from repogate.nft.names import OWNER_COUNTER


def parse_table(name: str, listing: Iterable[dict[str, Any]]) -> KernelTable:
    sets: dict[str, KernelSet] = {}
    chains: dict[str, dict[str, Any]] = {}
    comments: dict[str, list[str | None]] = {}
    counters: dict[str, CounterValue] = {}
    others: list[tuple[str, str]] = []
    owner: str | None = None
    for item in listing:
        if "set" in item:
            body = item["set"]
            nft_type = body.get("type")
            sets[body["name"]] = KernelSet(
                name=body["name"],
                nft_type=nft_type if isinstance(nft_type, str) else repr(nft_type),
                interval="interval" in body.get("flags", []),
                elements=frozenset(_element_text(e) for e in body.get("elem", [])),
            )
        elif "chain" in item:
            chains[item["chain"]["name"]] = item["chain"]
        elif "rule" in item:
            rule = item["rule"]
            comments.setdefault(rule["chain"], []).append(rule.get("comment"))
        elif "counter" in item and item["counter"].get("name") == OWNER_COUNTER:
            owner = str(item["counter"].get("comment", ""))
        elif "counter" in item:
            body = item["counter"]
            counters[body["name"]] = CounterValue(
                int(body.get("packets", 0)), int(body.get("bytes", 0))
            )
        else:
            for kind, body in item.items():
                if kind not in ("metainfo", "table") and isinstance(body, dict) and "name" in body:
                    others.append((kind, body["name"]))
    return KernelTable(
        name=name,
        sets=sets,
        chains={
            chain_name: KernelChain(
                name=chain_name,
                hook=body.get("hook"),
                chain_type=body.get("type"),
                priority=body.get("prio"),
                policy=body.get("policy"),
                rule_comments=tuple(comments.get(chain_name, [])),
            )
            for chain_name, body in chains.items()
        },
        counters=counters,
        others=tuple(sorted(others)),
        owner=owner,
    )


def _element_text(element: Any) -> str:
    """nft's element forms -> the text form repogate plans with."""
    if isinstance(element, dict) and "elem" in element:  # an element with attributes
        element = element["elem"].get("val")
    if isinstance(element, str):
        return _canonical(element)
    if isinstance(element, dict) and "prefix" in element:
        prefix = element["prefix"]
        return f"{_canonical(prefix['addr'])}/{prefix['len']}"
    if isinstance(element, dict) and "range" in element:
        low, high = element["range"]
        return f"{_canonical(low)}-{_canonical(high)}"
    return repr(element)


def _canonical(address: str) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, address))
    except OSError:
        return address


def parse_nat_rules(listing: Iterable[dict[str, Any]], exclude: str) -> list[NatRule]:
    """SNAT and masquerade rules in postrouting NAT chains of every table but ours
    (`exclude`, an inet table name), from a terse `list ruleset`."""
    nat_chains = {
        (c["family"], c["table"], c["name"])
        for item in listing
        if "chain" in item
        for c in [item["chain"]]
        if c.get("type") == "nat" and c.get("hook") == "postrouting"
    }
    found: list[NatRule] = []
    for item in listing:
        rule = item.get("rule")
        if not isinstance(rule, dict):
            continue
        key = (rule.get("family"), rule.get("table"), rule.get("chain"))
        if key not in nat_chains or (key[0] == "inet" and key[1] == exclude):
            continue
        found += _nat_of(f"{key[0]} {key[1]}", str(key[2]), rule.get("expr", []))
    return found


def _nat_of(table: str, chain: str, expressions: list[Any]) -> list[NatRule]:
    oifname: str | None = None
    family: Family | None = (
        4 if table.startswith("ip ") else 6 if table.startswith("ip6 ") else None
    )
    for expr in expressions:
        match = expr.get("match") if isinstance(expr, dict) else None
        if isinstance(match, dict) and match.get("op") in ("==", "in"):
            left, right = match.get("left"), match.get("right")
            if isinstance(left, dict) and left.get("meta", {}).get("key") == "oifname":
                oifname = right if isinstance(right, str) else None
            elif isinstance(left, dict) and "payload" in left:
                protocol = left["payload"].get("protocol")
                family = 4 if protocol == "ip" else 6 if protocol == "ip6" else family
        if isinstance(expr, dict) and "masquerade" in expr:
            return [NatRule(table, chain, "masquerade", None, oifname, family)]
        if isinstance(expr, dict) and "snat" in expr:
            body = expr["snat"] if isinstance(expr["snat"], dict) else {}
            address = body.get("addr")
            nat_family = body.get("family")
            if nat_family in ("ip", "ip6"):
                family = 4 if nat_family == "ip" else 6
            shown = address if isinstance(address, str) else None
            return [NatRule(table, chain, "snat", shown, oifname, family)]
    return []
