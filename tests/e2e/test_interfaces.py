"""End to end: a client group bound to interfaces admits its addresses only from there.

Real packets through the lab's gateway: the same listed address is admitted when
it arrives on the bound link and reset when it arrives on another, so a host on
one network cannot borrow an address that was approved for another.
"""

from __future__ import annotations

import pytest

from lab.config import office_group
from lab.topology import Lab
from tests.e2e.test_daemon import BOB, OFFICE_WITHOUT_BOB, SSH_HTTPS, check_enforcing, configure

pytestmark = pytest.mark.root


def test_a_bound_group_admits_only_packets_from_its_interfaces(bare_lab: Lab) -> None:
    lab = bare_lab
    alice_link = f"{lab.tag}galic"  # the gateway's side of alice's veth
    bound = office_group([*OFFICE_WITHOUT_BOB, BOB]) | {"interfaces": [alice_link]}
    try:
        configure(lab, {"clients": [bound]})
        result = lab.repogate("sync")
        assert result.returncode == 0, result.stderr
        assert f'iifname "{alice_link}"' in lab.nft("list", "table", "inet", lab.table).stdout
        # bob's address is listed, but bob's packets arrive on bob's link: refused.
        problems = check_enforcing(
            lab,
            allowed=[("alice", None)],
            refused=[("bob", BOB), ("mallory", None)],
            targets=SSH_HTTPS,
        )
        assert not problems, "\n".join(problems)
        # Unbound again, bob is admitted: the binding, not the list, refused him.
        configure(lab, {"clients": [office_group([*OFFICE_WITHOUT_BOB, BOB])]})
        assert lab.repogate("sync").returncode == 0
        problems = check_enforcing(
            lab,
            allowed=[("alice", None), ("bob", BOB)],
            refused=[("mallory", None)],
            targets=SSH_HTTPS,
        )
        assert not problems, "\n".join(problems)
    finally:
        configure(lab)
