"""The only module that imports pyroute2: rtnetlink sockets, their message parser, and
the WireGuard generic-netlink family.

Every import happens inside the function that needs it: the CLI's start-up time is
part of every `repogate sync`, and pyroute2 takes tens of milliseconds to import.
pyroute2 0.9 runs its sockets on an asyncio loop owned by the thread that made them,
so callers create them in the thread that uses them; 0.7 (Debian bookworm) works the
same way.
"""

from __future__ import annotations

from typing import Any


def iproute() -> Any:
    """An rtnetlink socket (`IPRoute`): links, addresses, routes, neighbours."""
    from pyroute2 import IPRoute  # noqa: PLC0415

    return IPRoute()


def link_and_address_groups() -> int:
    """The multicast groups of link and address changes, IPv4 and IPv6."""
    from pyroute2.netlink.rtnl import (  # noqa: PLC0415
        RTMGRP_IPV4_IFADDR,
        RTMGRP_IPV6_IFADDR,
        RTMGRP_LINK,
    )

    return int(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)


def rtnl_parser() -> Any:
    """A parser of raw rtnetlink datagrams (`MarshalRtnl`), for a socket of our own."""
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # noqa: PLC0415

    return MarshalRtnl()


def wireguard() -> Any:
    """The kernel's WireGuard family; ImportError where pyroute2 has no support."""
    from pyroute2 import WireGuard  # noqa: PLC0415

    return WireGuard()
