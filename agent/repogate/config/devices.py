"""The device client types (wireguard, openvpn, dhcp, neighbours).

An inventory (config.inventories) says which devices are compliant; a device group
says which of them the host sees right now and where (an address map). A group
naming an inventory that does not exist is an error at the group's key path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repogate.config.checks import (
    IFNAME_PATTERN,
    Checker,
    did_you_mean,
    group_name,
    optional_duration,
)
from repogate.config.schema import (
    AgentConfig,
    ClientGroup,
    DeviceClients,
    Inventory,
)

COMMON_DEVICE_KEYS = {"name", "type", "inventory", "interval", "max_stale", "max_shrink"}
DEVICE_KEYS = {
    "wireguard": {"interface", "max_handshake_age"},
    "openvpn": {"status_file", "management", "interface"},
    "dhcp": {"leases", "format"},
    "neighbours": set(),  # `interfaces` (taken by every group) names what to watch
}
REQUIRED = {
    "wireguard": {"interface"},
    "openvpn": {"status_file"},
    "dhcp": {"leases"},
    "neighbours": set(),
}


def parse_device_group(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> DeviceClients | None:
    kind = str(spec.get("type"))
    table = check.table(
        spec, path, COMMON_DEVICE_KEYS | DEVICE_KEYS[kind], required={"name"} | REQUIRED[kind]
    )
    name = group_name(check, table, path)
    interface = check.string(table, path, "interface", None)
    if interface is not None and not IFNAME_PATTERN.fullmatch(interface):
        check.problem(f"{path}.interface", f"{interface!r} is not an interface name")
    lease_format = check.choice(table, path, "format", "dnsmasq", ("dnsmasq", "kea"))
    group = DeviceClients(
        name=name or "",
        type=kind,  # type: ignore[arg-type]  # one of DEVICE_KEYS, checked by the caller
        inventory=check.string(table, path, "inventory", None),
        interface=interface,
        max_handshake_age=check.duration(table, path, "max_handshake_age", 180.0, low=1),
        status_file=check.file(table, path, "status_file", base),
        management=check.string(table, path, "management", None),
        leases=check.file(table, path, "leases", base),
        lease_format="kea" if lease_format == "kea" else "dnsmasq",
        interval=check.duration(table, path, "interval", 2.0, low=0.2),
        max_stale=optional_duration(check, table, path, "max_stale"),
        max_shrink=check.fraction(table, path, "max_shrink"),
        # A tunnel's addresses are admitted only from the tunnel (`interfaces` overrides).
        interfaces=(interface,) if interface is not None else (),
    )
    return group if name is not None else None


def check_inventory_names(
    check: Checker,
    raw: object,
    groups: tuple[ClientGroup, ...],
    inventories: Mapping[str, Inventory],
) -> None:
    """Every device group's inventory must exist (reported at the group's key path)."""
    positions = {
        spec.get("name"): index
        for index, spec in enumerate(raw if isinstance(raw, list) else [])
        if isinstance(spec, dict)
    }
    for group in groups:
        if not isinstance(group, DeviceClients) or group.inventory is None:
            continue
        if group.inventory not in inventories:
            check.problem(
                f"clients[{positions.get(group.name, '?')}].inventory",
                f"{group.inventory!r} is not a defined inventory"
                + did_you_mean(group.inventory, set(inventories)),
            )
