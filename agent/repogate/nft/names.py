"""Names of the objects in the owned table; the layout is documented here once.

table inet <table>
  counter allowed_<dest>, denied_<dest>
  set client_<group>_v4_addr   ipv4_addr              single addresses (hash)
  set client_<group>_v4_net    ipv4_addr, interval    networks, collapsed
  set client_<group>_v6_addr / client_<group>_v6_net  the same for IPv6
  set dest_<dest>_v4 / dest_<dest>_v6                 interval
  chain gate_<dest>_v4 / _v6   a destination set's allow and deny rules
  chain gate                   jumps to them by destination set (nft.layout)
  chain forward / output       base chains that jump to gate on the gated ports
  chain egress_nat             nat at srcnat ([egress] snat = true): admitted flows to
                               protected destinations leave from the declared address
  counter repogate_owner       comment "repogate instance <id>": the ownership mark
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from repogate.addresses import Family
from repogate.model import Hook

SetKind = Literal["addr", "net"]
SET_KINDS: tuple[SetKind, ...] = ("addr", "net")  # single addresses (hash), networks
Verdict = Literal["allowed", "denied"]
GATE_CHAIN = "gate"
NAT_CHAIN = "egress_nat"
HOOKS: tuple[Hook, ...] = get_args(Hook)
DESTINATION_SET_PREFIX = "dest_"


@dataclass(frozen=True)
class BaseChain:
    """How a base chain hooks in: what `list chain` shows and `add chain` sets."""

    hook: str
    chain_type: str
    priority: int


def base_chain(name: str) -> BaseChain | None:
    """The hook of an owned base chain; None for the regular chains (gate and gate_*)."""
    if name == NAT_CHAIN:
        return BaseChain("postrouting", "nat", 100)  # srcnat
    if name in HOOKS:
        return BaseChain(name, "filter", 0)
    return None


# The ownership mark: a named counter whose comment carries this repogate's instance
# id (kept in state_dir). nft 1.0.6's JSON drops table, chain and set comments but
# keeps counter comments, so a counter is where a mark survives a listing.
OWNER_COUNTER = "repogate_owner"
OWNER_PREFIX = "repogate instance "


def owner_comment(instance_id: str) -> str:
    return f"{OWNER_PREFIX}{instance_id}"


def owner_id(comment: str | None) -> str | None:
    """The instance id in an owner mark, or None if the text is not one."""
    if comment is None or not comment.startswith(OWNER_PREFIX):
        return None
    return comment[len(OWNER_PREFIX) :].strip() or None


def client_set(group: str, family: Family, kind: SetKind) -> str:
    return f"client_{group}_v{family}_{kind}"


def destination_set(destination: str, family: Family) -> str:
    return f"{DESTINATION_SET_PREFIX}{destination}_v{family}"


def destination_chain(destination_set_name: str) -> str:
    """The chain holding one destination set's rules: dest_<d>_v4 -> gate_<d>_v4."""
    return f"{GATE_CHAIN}_{destination_set_name.removeprefix(DESTINATION_SET_PREFIX)}"


def counter(destination: str, verdict: Verdict) -> str:
    return f"{verdict}_{destination}"


# Rule comments carry the digest of the rules, so a cheap listing of one chain's
# comments tells whether the rules are still the ones repogate wrote.
def rule_comment(rule_comment_text: str, digest: str) -> str:
    return f"{rule_comment_text} [{digest}]"


def jump_comment(digest: str) -> str:
    return f"repogate [{digest}]"
