"""[[inventories]] and the device client types (wireguard, openvpn, dhcp, neighbours).

An inventory says which devices are compliant; a device group says which of them
the host sees right now and where (an address map). Both are checked here with
their key paths; a group naming an inventory that does not exist is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repogate.config.checks import (
    IFNAME_PATTERN,
    Checker,
    check_url,
    did_you_mean,
    group_name,
    optional_duration,
)
from repogate.config.schema import (
    AgentConfig,
    ClientGroup,
    DeviceClients,
    HttpOptions,
    Inventory,
)

INVENTORY_KEYS = {
    "name",
    "type",
    "path",
    "url",
    "format",
    "max_age",
    "interval",
    "allow_insecure",
    "ca_file",
    "token_file",
    "timeout",
    "max_bytes",
}
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


def parse_inventories(check: Checker, raw: object, base: Path | None) -> dict[str, Inventory]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        check.problem("inventories", "must be an array of tables ([[inventories]])")
        return {}
    found: dict[str, Inventory] = {}
    for index, spec in enumerate(raw):
        path = f"inventories[{index}]"
        inventory = _parse_inventory(check, spec, path, base)
        if inventory is None:
            continue
        if inventory.name in found:
            check.problem(f"{path}.name", f"{inventory.name!r} is already used")
            continue
        found[inventory.name] = inventory
    return found


def _parse_inventory(
    check: Checker, spec: object, path: str, base: Path | None
) -> Inventory | None:
    table = check.table(spec, path, INVENTORY_KEYS, required={"name", "type", "format"})
    name = group_name(check, table, path)
    kind = check.choice(table, path, "type", "file", ("file", "http"))
    list_format = check.choice(table, path, "format", "csv", ("csv", "json"))
    max_age = optional_duration(check, table, path, "max_age")
    file_path: Path | None = None
    http: HttpOptions | None = None
    if kind == "file":
        file_path = check.file(table, path, "path", base)
        if file_path is None and "path" not in table:
            check.problem(f"{path}.path", 'is required with type = "file"')
        for key in ("url", "allow_insecure", "ca_file", "token_file", "timeout", "max_bytes"):
            if key in table:
                check.problem(f"{path}.{key}", 'only applies with type = "http"')
    else:
        insecure = check.boolean(table, path, "allow_insecure", False)
        url = check.string(table, path, "url", None)
        if url is None:
            check.problem(f"{path}.url", 'is required with type = "http"')
        elif check_url(check, f"{path}.url", url, allow_insecure=insecure):
            http = HttpOptions(
                url=url,
                allow_insecure=insecure,
                ca_file=check.file(table, path, "ca_file", base),
                token_file=check.file(table, path, "token_file", base),
                timeout=check.duration(table, path, "timeout", 10.0, low=0.1),
                max_bytes=check.integer(table, path, "max_bytes", 16 << 20, low=1, high=2**31),
            )
        if "path" in table:
            check.problem(f"{path}.path", 'only applies with type = "file"')
    interval = check.duration(table, path, "interval", 10.0 if kind == "file" else 300.0, low=1)
    if name is None or (file_path is None and http is None):
        return None
    return Inventory(
        name=name,
        format="json" if list_format == "json" else "csv",
        path=file_path,
        http=http,
        max_age=max_age,
        interval=interval,
    )


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
