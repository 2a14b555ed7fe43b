"""The nf_tables wire format, on netlink bytes built here by hand (no kernel)."""

from __future__ import annotations

import struct

from repogate.model import CounterValue
from repogate.nft import netlink
from repogate.nft.netlink import Commit, CommitTracker, Msg

NFT = 10 << 8
INET, IP = 1, 2
NESTED = 0x8000


def nla(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def string(kind: int, text: str) -> bytes:
    return nla(kind, text.encode() + b"\0")


def message(kind: int, body: bytes, *, family: int = INET, seq: int = 0, flags: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, 0) + body
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, seq, 0) + payload + b"\0" * (-length % 4)


def element(table: str, family: int = INET) -> bytes:
    """A NEWSETELEM notification: table, set, then the element list (never parsed)."""
    body = string(1, table) + string(2, "client_v4") + nla(3 | NESTED, b"\x08\x00\x01\x00" * 2)
    return message(NFT | Msg.NEWSETELEM, body, family=family)


def newgen(generation: int, pid: int, process: str = "nft") -> bytes:
    body = nla(1, struct.pack("!I", generation)) + nla(2, struct.pack("!I", pid))
    return message(NFT | Msg.NEWGEN, body + string(3, process), family=0)


def test_a_commit_to_the_watched_table_is_touched() -> None:
    tracker = CommitTracker("repogate")
    data = element("repogate") * 3 + newgen(41, 1234)
    assert tracker.feed(data) == [Commit(41, 1234, "nft", True)]


def test_other_tables_and_families_do_not_touch() -> None:
    tracker = CommitTracker("repogate")
    data = element("other") + element("repogate", family=IP) + element("repogate2") + newgen(7, 9)
    assert tracker.feed(data) == [Commit(7, 9, "nft", False)]


def test_a_commit_split_across_reads_is_one_commit() -> None:
    tracker = CommitTracker("repogate")
    assert tracker.feed(element("repogate")) == []
    first, second = tracker.feed(newgen(2, 5) + element("x") + newgen(3, 6))
    assert first.touched and not second.touched


def test_every_kind_of_change_names_its_table_first() -> None:
    for kind in (Msg.NEWTABLE, Msg.DELCHAIN, Msg.NEWRULE, Msg.DELSET, Msg.NEWOBJ):
        tracker = CommitTracker("repogate")
        data = message(NFT | kind, string(1, "repogate") + string(3, "x")) + newgen(1, 2)
        assert tracker.feed(data)[0].touched, kind


def test_a_get_or_another_subsystem_is_not_a_change() -> None:
    tracker = CommitTracker("repogate")
    get = message(NFT | Msg.GETTABLE, string(1, "repogate"))
    conntrack = message((1 << 8) | 0, string(1, "repogate"))
    assert tracker.feed(get + conntrack + newgen(1, 2)) == [Commit(1, 2, "nft", False)]


def test_set_table_and_reset() -> None:
    tracker = CommitTracker("old")
    tracker.set_table("new")
    assert tracker.feed(element("old") + newgen(1, 2))[0].touched is False
    tracker.feed(element("new"))
    tracker.reset()  # an overflow lost the rest of that commit
    assert tracker.feed(newgen(2, 2))[0].touched is False


def test_truncated_and_malformed_data_stop_quietly() -> None:
    tracker = CommitTracker("repogate")
    assert tracker.feed(b"\x00" * 20) == []
    assert tracker.feed(newgen(1, 2)[:10]) == []


def test_request_layout() -> None:
    attrs = netlink.attr_str(1, "repogate")
    data = netlink.request(Msg.GETTABLE, 77, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK, attrs)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", data)
    assert (length, kind, flags, seq, pid) == (len(data), NFT | 1, 5, 77, 0)
    assert data[16:20] == bytes([INET, 0, 0, 0])
    assert data[20:] == string(1, "repogate")
    assert netlink.attr_u32(3, 1) == nla(3, b"\x00\x00\x00\x01")


def test_messages_errors_and_generation() -> None:
    error = struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, 5, 0) + struct.pack("=i", -2)
    error += b"\0" * 16  # the request's header, echoed back
    data = newgen(99, 1) + error
    first, second = netlink.iter_messages(data)
    assert netlink.parse_generation(first) == 99
    assert (second.type, second.seq, second.error) == (netlink.NLMSG_ERROR, 5, 2)


def test_parse_counter() -> None:
    data = nla(1, struct.pack("!Q", 1500)) + nla(2, struct.pack("!Q", 3)) + nla(3, b"\0" * 4)
    body = string(1, "repogate") + string(2, "allowed_bitbucket") + nla(3, struct.pack("!I", 1))
    body += nla(4 | NESTED, data) + nla(5, struct.pack("!I", 1))
    (counter,) = netlink.iter_messages(message(NFT | Msg.NEWOBJ, body))
    assert netlink.parse_counter(counter) == ("allowed_bitbucket", CounterValue(3, 1500))
    quota = string(1, "repogate") + string(2, "q") + nla(3, struct.pack("!I", 2))
    (other,) = netlink.iter_messages(message(NFT | Msg.NEWOBJ, quota))
    assert netlink.parse_counter(other) is None


def test_parse_rule_comment() -> None:
    comment = "allow office → bitbucket [0123456789ab]".encode() + b"\0"
    udata = bytes([1, 2]) + b"\x00\x01" + bytes([0, len(comment)]) + comment
    body = string(1, "repogate") + string(2, "gate") + nla(7, udata)
    (rule,) = netlink.iter_messages(message(NFT | Msg.NEWRULE, body))
    assert netlink.parse_rule_comment(rule) == "allow office → bitbucket [0123456789ab]"
    (bare,) = netlink.iter_messages(message(NFT | Msg.NEWRULE, string(1, "repogate")))
    assert netlink.parse_rule_comment(bare) is None
