"""Turn libnftables' JSON listing of the owned table into a KernelTable (pure)."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from repogate.model import CounterValue, KernelChain, KernelSet, KernelTable
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
