"""nf_tables over NETLINK_NETFILTER, the wire format only: build requests, parse replies.

Pure (bytes in, values out), so it is unit-tested without a kernel; `nft.query`
and `nft.monitor` own the sockets. Written with `struct` rather than pyroute2
because pyroute2 (0.7.2 and 0.9.7) has no message class for nf_tables objects
(counters), and it parses every attribute of every message: its monitor took
2.5-4 s to read the 100,001 messages of one 100,000-element commit, where the
monitor needs only headers and the table name. Layouts are from the kernel's
include/uapi/linux/netfilter/nf_tables.h.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from repogate.model import CounterValue

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNLGRP_NFTABLES = 7  # the multicast group `nft monitor` joins
NFPROTO_INET = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10  # the ruleset changed while the dump was running
NLM_F_DUMP = 0x300
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id
_ATTR = struct.Struct("=HH")  # nlattr: len, type
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")
_ERRNO = struct.Struct("=i")
_NFT = NFNL_SUBSYS_NFTABLES << 8


class Msg(IntEnum):
    """NFT_MSG_*: the low byte of an nf_tables message type."""

    NEWTABLE = 0
    GETTABLE = 1
    DELTABLE = 2
    NEWCHAIN = 3
    GETCHAIN = 4
    DELCHAIN = 5
    NEWRULE = 6
    GETRULE = 7
    DELRULE = 8
    NEWSET = 9
    DELSET = 11
    NEWSETELEM = 12
    DELSETELEM = 14
    NEWGEN = 15
    GETGEN = 16
    NEWOBJ = 18
    GETOBJ = 19
    DELOBJ = 20
    NEWFLOWTABLE = 22
    DELFLOWTABLE = 24


# The notifications a commit sends for what it changed; in each, attribute 1 is the
# table's name (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
# NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
CHANGE_TYPES = frozenset(
    _NFT | kind
    for kind in (
        Msg.NEWTABLE,
        Msg.DELTABLE,
        Msg.NEWCHAIN,
        Msg.DELCHAIN,
        Msg.NEWRULE,
        Msg.DELRULE,
        Msg.NEWSET,
        Msg.DELSET,
        Msg.NEWSETELEM,
        Msg.DELSETELEM,
        Msg.NEWOBJ,
        Msg.DELOBJ,
        Msg.NEWFLOWTABLE,
        Msg.DELFLOWTABLE,
    )
)
NEWGEN_TYPE = _NFT | Msg.NEWGEN

# Attribute numbers used here (enum nft_*_attributes).
TABLE_NAME = 1  # NFTA_TABLE_NAME, and the table attribute of every other object
CHAIN_NAME = 3  # NFTA_CHAIN_NAME
RULE_CHAIN = 2  # NFTA_RULE_CHAIN
RULE_USERDATA = 7  # NFTA_RULE_USERDATA: libnftnl's TLVs, the comment among them
OBJ_NAME, OBJ_TYPE, OBJ_DATA = 2, 3, 4  # NFTA_OBJ_*
NFT_OBJECT_COUNTER = 1
COUNTER_BYTES, COUNTER_PACKETS = 1, 2  # NFTA_COUNTER_*
GEN_ID, GEN_PROC_PID, GEN_PROC_NAME = 1, 2, 3  # NFTA_GEN_*
_UDATA_RULE_COMMENT = 0  # NFTNL_UDATA_RULE_COMMENT


@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message; `payload` follows the nlmsghdr."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes

    @property
    def error(self) -> int:
        """The errno of an NLMSG_ERROR (0 is an acknowledgement)."""
        code: int = _ERRNO.unpack_from(self.payload)[0]
        return -code

    def attrs(self) -> Iterator[tuple[int, bytes]]:
        """The attributes after the nfgenmsg."""
        return iter_attrs(self.payload, _NFGEN.size)


@dataclass(frozen=True, slots=True)
class Commit:
    """One committed generation, as the monitor saw it."""

    generation: int
    pid: int  # the committing task: a thread id (task_pid_nr), not always the process's
    process: str
    touched: bool  # whether it changed the watched table


def request(kind: Msg, seq: int, flags: int, attrs: bytes = b"") -> bytes:
    """An nf_tables request for family inet."""
    body = _NFGEN.pack(NFPROTO_INET, 0, 0) + attrs
    return _HEADER.pack(_HEADER.size + len(body), _NFT | kind, flags, seq, 0) + body


def attr(kind: int, value: bytes) -> bytes:
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, kind) + value + b"\0" * (-length % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _BE32.pack(value))


def iter_messages(data: bytes) -> Iterator[Message]:
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, seq, pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return  # malformed: stop rather than loop
        yield Message(kind, flags, seq, pid, data[offset + _HEADER.size : offset + length])
        offset += (length + 3) & ~3


def iter_attrs(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            return
        yield kind & _NLA_TYPE_MASK, data[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3


def text(value: bytes) -> str:
    return value.rstrip(b"\0").decode(errors="replace")


def parse_generation(message: Message) -> int | None:
    for kind, value in message.attrs():
        if kind == GEN_ID:
            return int(_BE32.unpack(value)[0])
    return None


def parse_counter(message: Message) -> tuple[str, CounterValue] | None:
    """A NEWOBJ of type counter -> its name and value; None for other objects."""
    found = dict(message.attrs())
    if OBJ_TYPE not in found or _BE32.unpack(found[OBJ_TYPE])[0] != NFT_OBJECT_COUNTER:
        return None
    data = dict(iter_attrs(found.get(OBJ_DATA, b"")))
    packets = _BE64.unpack(data[COUNTER_PACKETS])[0] if COUNTER_PACKETS in data else 0
    octets = _BE64.unpack(data[COUNTER_BYTES])[0] if COUNTER_BYTES in data else 0
    return text(found[OBJ_NAME]), CounterValue(int(packets), int(octets))


def parse_rule_comment(message: Message) -> str | None:
    """The comment nft stored in a rule's userdata (type 0, NUL-terminated), if any."""
    for kind, value in message.attrs():
        if kind != RULE_USERDATA:
            continue
        offset = 0
        while offset + 2 <= len(value):
            entry_type, length = value[offset], value[offset + 1]
            if entry_type == _UDATA_RULE_COMMENT:
                return text(value[offset + 2 : offset + 2 + length])
            offset += 2 + length
    return None


class CommitTracker:
    """Follows the notification stream: which generation touched the watched table.

    A commit's notifications arrive in order, one message per changed object (one
    per set element), then NEWGEN. Only the headers and the table attribute are
    read, with no object made per message, so a 100,000-element commit stays cheap.
    """

    def __init__(self, table: str) -> None:
        self.set_table(table)
        self._touched = False

    def set_table(self, table: str) -> None:
        self._table = table.encode() + b"\0"

    def reset(self) -> None:
        """Forget a half-seen commit (after an overflow dropped messages)."""
        self._touched = False

    def feed(self, data: bytes) -> list[Commit]:
        commits: list[Commit] = []
        offset, size = 0, len(data)
        header, nfgen = _HEADER.size, _NFGEN.size
        while offset + header <= size:
            length, kind = _HEADER.unpack_from(data, offset)[:2]
            if length < header:
                break
            end = offset + length
            if kind == NEWGEN_TYPE:
                commits.append(self._commit(data[offset + header + nfgen : end]))
            elif (
                not self._touched
                and kind in CHANGE_TYPES
                and data[offset + header] == NFPROTO_INET
                and self._names_table(data, offset + header + nfgen, end)
            ):
                self._touched = True
            offset += (length + 3) & ~3
        return commits

    def _names_table(self, data: bytes, offset: int, end: int) -> bool:
        while offset + _ATTR.size <= end:
            length, kind = _ATTR.unpack_from(data, offset)
            if length < _ATTR.size:
                return False
            if kind & _NLA_TYPE_MASK == TABLE_NAME:
                return data[offset + _ATTR.size : offset + length] == self._table
            offset += (length + 3) & ~3
        return False

    def _commit(self, body: bytes) -> Commit:
        values = dict(iter_attrs(body))
        generation = _BE32.unpack(values[GEN_ID])[0] if GEN_ID in values else 0
        pid = _BE32.unpack(values[GEN_PROC_PID])[0] if GEN_PROC_PID in values else 0
        process = text(values.get(GEN_PROC_NAME, b""))
        commit = Commit(int(generation), int(pid), process, self._touched)
        self._touched = False
        return commit
