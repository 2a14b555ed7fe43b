"""Names of the objects in the owned table; the layout is documented here once.

table inet <table>
  counter allowed_<dest>, denied_<dest>
  set client_<group>_v4_addr   ipv4_addr              single addresses (hash)
  set client_<group>_v4_net    ipv4_addr, interval    networks, collapsed
  set client_<group>_v6_addr / client_<group>_v6_net  the same for IPv6
  set dest_<dest>_v4 / dest_<dest>_v6                 interval
  chain gate                   the allow and deny rules
  chain forward / output       base chains that only jump to gate
  chain egress_nat             nat at srcnat ([egress] snat = true): admitted flows to
                               protected destinations leave from the declared address
  counter repogate_owner       comment "repogate instance <id>": the ownership mark
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from repogate.addresses import Family
from repogate.model import DesiredState

SetKind = Literal["addr", "net"]
SET_KINDS: tuple[SetKind, ...] = ("addr", "net")  # single addresses (hash), networks
Verdict = Literal["allowed", "denied"]
GATE_CHAIN = "gate"
NAT_CHAIN = "egress_nat"


@dataclass(frozen=True)
class BaseChain:
    """How a base chain hooks in: what `list chain` shows and `add chain` sets."""

    hook: str
    chain_type: str
    priority: int


def base_chain(name: str) -> BaseChain | None:
    """The hook of an owned base chain; None for the regular chain `gate`."""
    if name == GATE_CHAIN:
        return None
    if name == NAT_CHAIN:
        return BaseChain("postrouting", "nat", 100)  # srcnat
    return BaseChain(name, "filter", 0)  # forward, output


def chain_names(desired: DesiredState) -> list[str]:
    """The chains the desired table holds, the gate first."""
    return [GATE_CHAIN, *desired.hooks, *([NAT_CHAIN] if desired.snat else [])]


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
    return f"dest_{destination}_v{family}"


def counter(destination: str, verdict: Verdict) -> str:
    return f"{verdict}_{destination}"


# Rule comments carry the digest of the rules, so a cheap listing of one chain's
# comments tells whether the rules are still the ones repogate wrote.
def rule_comment(rule_comment_text: str, digest: str) -> str:
    return f"{rule_comment_text} [{digest}]"


def jump_comment(digest: str) -> str:
    return f"repogate [{digest}]"


def expected_rule_comments(desired: DesiredState) -> dict[str, tuple[str, ...]]:
    """The comments each owned chain should carry, in order, for the desired rules."""
    digest = desired.rules_digest
    comments: dict[str, tuple[str, ...]] = {
        GATE_CHAIN: tuple(rule_comment(rule.comment, digest) for rule in desired.rules)
    }
    for hook in desired.hooks:
        comments[hook] = (jump_comment(digest),)
    if desired.snat:
        comments[NAT_CHAIN] = tuple(rule_comment(rule.comment, digest) for rule in desired.snat)
    return comments
