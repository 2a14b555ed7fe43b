"""Names of the objects in the owned table; the layout is documented here once.

table inet <table>
  counter allowed_<dest>, denied_<dest>
  set client_<group>_v4_addr   ipv4_addr              single addresses (hash)
  set client_<group>_v4_net    ipv4_addr, interval    networks, collapsed
  set client_<group>_v6_addr / client_<group>_v6_net  the same for IPv6
  set dest_<dest>_v4 / dest_<dest>_v6                 interval
  chain gate                   the allow and deny rules
  chain forward / output       base chains that only jump to gate
"""

from __future__ import annotations

from typing import Literal

from repogate.addresses import Family

SetKind = Literal["addr", "net"]
Verdict = Literal["allowed", "denied"]
GATE_CHAIN = "gate"


def client_set(group: str, family: Family, kind: SetKind) -> str:
    return f"client_{group}_v{family}_{kind}"


def destination_set(destination: str, family: Family) -> str:
    return f"dest_{destination}_v{family}"


def counter(destination: str, verdict: Verdict) -> str:
    return f"{verdict}_{destination}"
