"""The [[clients]] array: one parser per client group type, behind one signature.

A group's type picks its parser from CLIENT_TYPES; every parser records its problems
on the Checker and returns None when the group cannot be built, so the others are
still checked and all problems reach the admin together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from repogate.config.checks import (
    IFNAME_PATTERN,
    Checker,
    check_url,
    group_name,
    optional_duration,
    refresh_bounds,
)
from repogate.config.devices import DEVICE_KEYS, parse_device_group
from repogate.config.schema import (
    AgentConfig,
    ClientGroup,
    DnsClients,
    FileClients,
    HttpClients,
    HttpOptions,
    StaticClients,
)


def parse_clients(
    check: Checker, raw: object, agent: AgentConfig, base: Path | None
) -> tuple[ClientGroup, ...]:
    if raw is None:
        check.problem("clients", "at least one client group is required")
        return ()
    if not isinstance(raw, list):
        check.problem("clients", "must be an array of tables ([[clients]])")
        return ()
    groups: list[ClientGroup] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(raw):
        path = f"clients[{index}]"
        if not isinstance(spec, dict):
            check.problem(path, "must be a table")
            continue
        kind = spec.get("type")
        parser = CLIENT_TYPES.get(kind) if isinstance(kind, str) else None
        if parser is None:
            expected = ", ".join(CLIENT_TYPES)
            if kind is None:
                check.problem(f"{path}.type", f"is required (one of: {expected})")
            else:
                check.problem(f"{path}.type", f"{kind!r} is not a client type ({expected})")
            continue
        own = {key: value for key, value in spec.items() if key != "interfaces"}
        group = parser(check, own, path, agent, base)
        interfaces = _interfaces(check, spec, path)
        if group is None:
            continue
        if interfaces:
            group = dataclasses.replace(group, interfaces=interfaces)
        if group.name in seen:
            check.problem(
                f"{path}.name", f"{group.name!r} is already used by clients[{seen[group.name]}]"
            )
            continue
        seen[group.name] = index
        groups.append(group)
    if not raw:
        check.problem("clients", "at least one client group is required")
    return tuple(groups)


def _interfaces(check: Checker, spec: dict[str, Any], path: str) -> tuple[str, ...]:
    """`interfaces`, which any group type takes: where its packets must arrive."""
    names = check.list_of(spec, path, "interfaces", str, [])
    for index, name in enumerate(names):
        if not IFNAME_PATTERN.fullmatch(name):
            check.problem(f"{path}.interfaces[{index}]", f"{name!r} is not an interface name")
    if "interfaces" in spec and not names:
        check.problem(f"{path}.interfaces", "must name at least one interface (or leave it out)")
    return tuple(dict.fromkeys(names))


def _parse_static(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> StaticClients | None:
    table = check.table(spec, path, {"name", "type", "addresses"}, required={"name", "addresses"})
    name = group_name(check, table, path)
    entries = check.entries(table, path, "addresses", min_prefix=agent.prefix_limits, required=True)
    if name is None:
        return None
    return StaticClients(name=name, entries=tuple(entries))


# Keys every list source (file, http) takes besides its own: how to read the list,
# how often, and what to do when it fails or shrinks.
LIST_KEYS = {"name", "type", "format", "json_path", "interval", "max_stale", "max_shrink"}


def _list_format(
    check: Checker, table: dict[str, Any], path: str
) -> tuple[Literal["lines", "json"], str | None]:
    """`format` and the `json_path` that only applies to it."""
    list_format = check.choice(table, path, "format", "lines", ("lines", "json"))
    json_path = check.string(table, path, "json_path", None)
    if json_path is not None and list_format != "json":
        check.problem(f"{path}.json_path", 'only applies with format = "json"')
    return ("json" if list_format == "json" else "lines"), json_path


def _parse_file(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> FileClients | None:
    table = check.table(spec, path, {*LIST_KEYS, "path"}, required={"name", "path"})
    name = group_name(check, table, path)
    file_path = check.file(table, path, "path", base)
    list_format, json_path = _list_format(check, table, path)
    interval = check.duration(table, path, "interval", 10.0, low=1)
    max_stale = optional_duration(check, table, path, "max_stale")
    if name is None or file_path is None:
        return None
    return FileClients(
        name=name,
        path=file_path,
        format=list_format,
        json_path=json_path,
        interval=interval,
        max_stale=max_stale,
        max_shrink=check.fraction(table, path, "max_shrink"),
    )


HTTP_KEYS = {*LIST_KEYS, "url", "allow_insecure", "ca_file", "token_file", "timeout", "max_bytes"}


def _parse_http(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> HttpClients | None:
    table = check.table(spec, path, HTTP_KEYS, required={"name", "url"})
    name = group_name(check, table, path)
    insecure = check.boolean(table, path, "allow_insecure", False)
    url = check.string(table, path, "url", None)
    url_ok = url is not None and check_url(check, f"{path}.url", url, allow_insecure=insecure)
    list_format, json_path = _list_format(check, table, path)
    if "token" in spec:
        check.problem(f"{path}.token", "never write a token in the config: use token_file")
    options = HttpOptions(
        url=url or "",
        allow_insecure=insecure,
        ca_file=check.file(table, path, "ca_file", base),
        token_file=check.file(table, path, "token_file", base),
        timeout=check.duration(table, path, "timeout", 10.0, low=0.1),
        max_bytes=check.integer(table, path, "max_bytes", 16 * 1024 * 1024, low=1, high=2**31),
    )
    interval = check.duration(table, path, "interval", 300.0, low=1)
    if name is None or not url_ok:
        return None
    return HttpClients(
        name=name,
        http=options,
        format=list_format,
        json_path=json_path,
        interval=interval,
        max_stale=optional_duration(check, table, path, "max_stale"),
        max_shrink=check.fraction(table, path, "max_shrink"),
    )


DNS_KEYS = {
    "name",
    "type",
    "names",
    "min_refresh",
    "max_refresh",
    "max_addresses",
    "max_stale",
    "max_shrink",
}


def _parse_dns(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> DnsClients | None:
    table = check.table(spec, path, DNS_KEYS, required={"name", "names"})
    name = group_name(check, table, path)
    names = check.hostnames(table, path, "names")
    if "names" in table and not names and not check.problems:
        check.problem(f"{path}.names", "must name at least one host")
    min_refresh, max_refresh = refresh_bounds(check, table, path)
    if name is None:
        return None
    return DnsClients(
        name=name,
        names=tuple(names),
        min_refresh=min_refresh,
        max_refresh=max_refresh,
        max_addresses=check.integer(table, path, "max_addresses", 8, low=1, high=1024),
        max_stale=optional_duration(check, table, path, "max_stale"),
        max_shrink=check.fraction(table, path, "max_shrink"),
    )


ClientParser = Callable[
    [Checker, dict[str, Any], str, AgentConfig, Path | None], ClientGroup | None
]
CLIENT_TYPES: dict[str, ClientParser] = {
    "static": _parse_static,
    "file": _parse_file,
    "http": _parse_http,
    "dns": _parse_dns,
    **dict.fromkeys(DEVICE_KEYS, parse_device_group),
}
