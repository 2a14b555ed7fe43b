"""Read the TOML config into frozen dataclasses, checking everything up front.

Every problem is collected with its key path (`clients[0].addresses[3]`) and
raised together as one ConfigError, so an admin fixes a file in one pass and an
invalid file never changes the kernel.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from repogate.addresses import canonical_address
from repogate.config.checks import Checker, did_you_mean
from repogate.config.presets import PRESETS
from repogate.config.schema import (
    DEFAULT_METRICS_PORT,
    AgentConfig,
    AuditConfig,
    ClientGroup,
    Config,
    Destination,
    DnsClients,
    FeedConfig,
    FileClients,
    Hook,
    HttpClients,
    HttpOptions,
    MetricsConfig,
    ResolverConfig,
    Rule,
    StaticClients,
)
from repogate.errors import ConfigError, ConfigProblem

DEFAULT_CONFIG_PATH = Path("/etc/repogate/repogate.toml")
CONFIG_ENV = "REPOGATE_CONFIG"
HOOKS = ("forward", "output")
# A destination broader than this is almost surely a typo (0.0.0.0/0 would reset every
# unapproved SSH and HTTPS connection through the host).
DESTINATION_PREFIX_LIMITS = {4: 8, 6: 16}
# The table name becomes part of every nft command.
TABLE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
LISTEN_PATTERN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):(\d{1,5})")
IFNAME_PATTERN = re.compile(r"[^/\s:]{1,15}")  # what the kernel accepts as a link name


def config_path(explicit: str | None) -> Path:
    """The config to read: --config, else $REPOGATE_CONFIG, else the default."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            [ConfigProblem("", f"file not found (use --config PATH or ${CONFIG_ENV})")], str(path)
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem("", f"cannot read: {exc}")], str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"invalid TOML: {exc}")], str(path)) from exc
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path | None = None) -> Config:
    """Check a decoded TOML document; raise ConfigError listing every problem."""
    check = Checker()
    top = check.table(
        data, "", {"agent", "resolver", "metrics", "audit", "destinations", "clients", "rules"}
    )
    base = path.parent if path is not None else None
    agent = _parse_agent(check, top.get("agent", {}))
    resolver = _parse_resolver(check, top.get("resolver", {}))
    destinations = _parse_destinations(check, top.get("destinations"), base)
    clients = _parse_clients(check, top.get("clients"), agent, base)
    rules = _parse_rules(check, top.get("rules", []), destinations, clients)
    metrics = _parse_metrics(check, top.get("metrics", {}), base)
    audit_table = check.table(top.get("audit", {}), "audit", {"path"})
    audit = AuditConfig(path=_path(check.string(audit_table, "audit", "path", None), base))
    if check.problems:
        raise ConfigError(check.problems, str(path) if path else "")
    return Config(agent, destinations, clients, rules, path, resolver, metrics, audit)


def _parse_metrics(check: Checker, raw: object, base: Path | None) -> MetricsConfig:
    keys = {
        "listen",
        "tls_cert_file",
        "tls_key_file",
        "basic_auth_user",
        "basic_auth_password_file",
    }
    table = check.table(raw, "metrics", keys)
    listen = check.string(table, "metrics", "listen", f"127.0.0.1:{DEFAULT_METRICS_PORT}")
    host: str | None = None
    port = DEFAULT_METRICS_PORT
    if table.get("listen") == "":
        pass  # listen = "" turns metrics off
    elif listen is not None:
        found = LISTEN_PATTERN.fullmatch(listen)
        address = (found.group(1) or found.group(2)) if found else None
        if found is None or address is None or canonical_address(address) is None:
            check.problem(
                "metrics.listen",
                f'{listen!r} is not ADDRESS:PORT (like "127.0.0.1:{DEFAULT_METRICS_PORT}" '
                f'or "[::1]:{DEFAULT_METRICS_PORT}"; "" turns metrics off)',
            )
        elif not 0 <= int(found.group(3)) <= 65535:  # 0: any free port (tests)
            check.problem("metrics.listen", f"port {found.group(3)} is outside 0-65535")
        else:
            host, port = address, int(found.group(3))
    settings = MetricsConfig(
        host=host,
        port=port,
        tls_cert_file=_path(check.string(table, "metrics", "tls_cert_file", None), base),
        tls_key_file=_path(check.string(table, "metrics", "tls_key_file", None), base),
        basic_auth_user=check.string(table, "metrics", "basic_auth_user", None),
        basic_auth_password_file=_path(
            check.string(table, "metrics", "basic_auth_password_file", None), base
        ),
    )
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        check.problem("metrics", "tls_cert_file and tls_key_file go together")
    if (settings.basic_auth_user is None) != (settings.basic_auth_password_file is None):
        check.problem("metrics", "basic_auth_user and basic_auth_password_file go together")
    return settings


def _parse_resolver(check: Checker, raw: object) -> ResolverConfig:
    table = check.table(raw, "resolver", {"nameservers", "port", "timeout"})
    nameservers = check.list_of(table, "resolver", "nameservers", str, [])
    for index, server in enumerate(nameservers):
        if canonical_address(server) is None:
            check.problem(f"resolver.nameservers[{index}]", f"{server!r} is not an IP address")
    return ResolverConfig(
        nameservers=tuple(nameservers),
        port=check.integer(table, "resolver", "port", 53, low=1, high=65535),
        timeout=check.duration(table, "resolver", "timeout", 2.0, low=0.05),
    )


def _parse_agent(check: Checker, raw: object) -> AgentConfig:
    defaults = AgentConfig()
    table = check.table(
        raw,
        "agent",
        {
            "table",
            "state_dir",
            "hooks",
            "min_client_prefix_v4",
            "min_client_prefix_v6",
            "on_stop",
            "verify_interval",
            "log_format",
            "egress_interfaces",
            "max_stale",
            "max_shrink",
        },
    )
    name = check.string(table, "agent", "table", defaults.table)
    if name and not TABLE_PATTERN.fullmatch(name):
        check.problem(
            "agent.table",
            f"{name!r} is not a valid table name (letters, digits, '_' or '-', "
            "starting with a letter, at most 64)",
        )
    state_dir = check.string(table, "agent", "state_dir", str(defaults.state_dir))
    if state_dir and not state_dir.startswith("/"):
        check.problem("agent.state_dir", f"{state_dir!r} must be an absolute path")
    hooks: list[Hook] = []
    for index, hook in enumerate(check.list_of(table, "agent", "hooks", str, ["forward"])):
        if hook not in HOOKS:
            check.problem(f"agent.hooks[{index}]", f"{hook!r} is not one of: {', '.join(HOOKS)}")
        elif hook in hooks:
            check.problem(f"agent.hooks[{index}]", f"{hook!r} is listed twice")
        else:
            hooks.append("forward" if hook == "forward" else "output")
    if table.get("hooks") == []:
        check.problem("agent.hooks", "needs at least one hook")
    prefix_v4 = check.integer(table, "agent", "min_client_prefix_v4", 8, low=0, high=32)
    prefix_v6 = check.integer(table, "agent", "min_client_prefix_v6", 32, low=0, high=128)
    on_stop = check.choice(table, "agent", "on_stop", "keep", ("keep", "remove"))
    log_format = check.choice(table, "agent", "log_format", "text", ("text", "json"))
    verify = check.duration(table, "agent", "verify_interval", defaults.verify_interval, low=1)
    max_stale = check.duration(table, "agent", "max_stale", defaults.max_stale)
    max_shrink = check.fraction(table, "agent", "max_shrink")
    interfaces = check.list_of(table, "agent", "egress_interfaces", str, [])
    for index, interface in enumerate(interfaces):
        if not IFNAME_PATTERN.fullmatch(interface):
            check.problem(
                f"agent.egress_interfaces[{index}]", f"{interface!r} is not an interface name"
            )
    return AgentConfig(
        table=name or defaults.table,
        state_dir=Path(state_dir or defaults.state_dir),
        hooks=tuple(hooks) or defaults.hooks,
        min_client_prefix_v4=prefix_v4,
        min_client_prefix_v6=prefix_v6,
        on_stop="remove" if on_stop == "remove" else "keep",
        verify_interval=verify,
        log_format="json" if log_format == "json" else "text",
        egress_interfaces=tuple(interfaces),
        max_stale=max_stale,
        max_shrink=defaults.max_shrink if max_shrink is None else max_shrink,
    )


DESTINATION_KEYS = {
    "networks",
    "hosts",
    "ports",
    "preset",
    "feed_url",
    "feed_ca_file",
    "feed_interval",
    "linger",
    "min_refresh",
    "max_refresh",
}


def _parse_destinations(check: Checker, raw: object, base: Path | None) -> dict[str, Destination]:
    if raw is None:
        check.problem("destinations", "at least one destination is required")
        return {}
    table = check.table(raw, "destinations", None)
    destinations: dict[str, Destination] = {}
    for name, spec in table.items():
        path = f"destinations.{name}"
        check.name(path, name)
        destination = _parse_destination(
            check, name, check.table(spec, path, DESTINATION_KEYS), base
        )
        if destination is not None:
            destinations[name] = destination
    if isinstance(raw, dict) and not raw:
        check.problem("destinations", "at least one destination is required")
    return destinations


def _parse_destination(
    check: Checker, name: str, table: dict[str, Any], base: Path | None
) -> Destination | None:
    path = f"destinations.{name}"
    preset_name = check.string(table, path, "preset", None)
    preset = PRESETS.get(preset_name) if preset_name else None
    if preset_name is not None and preset is None:
        check.problem(
            f"{path}.preset", f"{preset_name!r} is not a preset ({', '.join(sorted(PRESETS))})"
        )
    if preset is None and not ({"networks", "hosts"} & table.keys()):
        check.problem(path, "needs networks, hosts or a preset")
    entries = check.entries(
        table,
        path,
        "networks",
        min_prefix=DESTINATION_PREFIX_LIMITS,
        required=preset is None and "hosts" not in table,
        limit_reason="a destination this broad would gate unrelated traffic",
    )
    hosts = check.hostnames(table, path, "hosts")
    ports = check.ports(table, path, "ports", required=preset is None)
    if preset is None and "ports" not in table:
        check.problem(f"{path}.ports", "is required")
    feed: FeedConfig | None = None
    if preset is not None:
        hosts = list(dict.fromkeys([*preset.hosts, *hosts]))
        ports = ports or list(preset.ports)
        url = check.string(table, path, "feed_url", preset.feed_url)
        if url and _check_url(check, f"{path}.feed_url", url, allow_insecure=False):
            ca_file = check.string(table, path, "feed_ca_file", None)
            feed = FeedConfig(
                http=HttpOptions(url=url, ca_file=_path(ca_file, base), timeout=30.0),
                products=preset.feed_products,
                directions=preset.feed_directions,
                interval=check.duration(table, path, "feed_interval", 6 * 3600.0, low=60),
            )
    else:
        for key in ("feed_url", "feed_ca_file", "feed_interval"):
            if key in table:
                check.problem(f"{path}.{key}", "only applies with a preset")
    min_refresh, max_refresh = _refresh_bounds(check, table, path)
    return Destination(
        name=name,
        entries=tuple(entries),
        ports=tuple(ports or ()),
        hosts=tuple(hosts),
        feed=feed,
        preset=preset_name if preset is not None else None,
        linger=check.duration(table, path, "linger", 3600.0),
        min_refresh=min_refresh,
        max_refresh=max_refresh,
    )


def _group_name(check: Checker, table: dict[str, Any], path: str) -> str | None:
    name = check.string(table, path, "name", None)
    if name is not None:
        check.name(f"{path}.name", name)
    return name


def _optional_duration(check: Checker, table: dict[str, Any], path: str, key: str) -> float | None:
    """A duration if the key is there, else None (the agent's default applies)."""
    return check.duration(table, path, key, -1.0) if key in table else None


def _refresh_bounds(check: Checker, table: dict[str, Any], path: str) -> tuple[float, float]:
    """min_refresh and max_refresh, for TTL-driven DNS refreshes."""
    min_refresh = check.duration(table, path, "min_refresh", 30.0, low=1)
    max_refresh = check.duration(table, path, "max_refresh", 3600.0, low=1)
    if max_refresh < min_refresh:
        check.problem(f"{path}.max_refresh", "is shorter than min_refresh")
    return min_refresh, max_refresh


def _check_url(check: Checker, path: str, url: str, *, allow_insecure: bool) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        check.problem(path, f"{url!r} is not an http(s) URL")
        return False
    if parts.scheme == "http" and not allow_insecure:
        check.problem(path, f"{url!r} is not HTTPS (set allow_insecure = true to allow it)")
        return False
    if parts.username or parts.password:
        check.problem(path, "must not carry credentials: use token_file")
        return False
    return True


def _path(value: str | None, base: Path | None) -> Path | None:
    if value is None:
        return None
    resolved = Path(value)
    return base / resolved if not resolved.is_absolute() and base is not None else resolved


def _parse_clients(
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
        group = parser(check, spec, path, agent, base)
        if group is None:
            continue
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


def _parse_static(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> StaticClients | None:
    table = check.table(spec, path, {"name", "type", "addresses"}, required={"name", "addresses"})
    name = _group_name(check, table, path)
    entries = check.entries(table, path, "addresses", min_prefix=agent.prefix_limits, required=True)
    if name is None:
        return None
    return StaticClients(name=name, entries=tuple(entries))


def _parse_file(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> FileClients | None:
    table = check.table(
        spec,
        path,
        {"name", "type", "path", "format", "json_path", "interval", "max_stale", "max_shrink"},
        required={"name", "path"},
    )
    name = _group_name(check, table, path)
    file_path = check.string(table, path, "path", None)
    list_format = check.string(table, path, "format", "lines")
    if list_format not in ("lines", "json"):
        check.problem(f"{path}.format", f"{list_format!r} is not one of: lines, json")
    json_path = check.string(table, path, "json_path", None)
    if json_path is not None and list_format != "json":
        check.problem(f"{path}.json_path", 'only applies with format = "json"')
    interval = check.duration(table, path, "interval", 10.0, low=1)
    max_stale = _optional_duration(check, table, path, "max_stale")
    if name is None or file_path is None:
        return None
    resolved = Path(file_path)
    if not resolved.is_absolute() and base is not None:
        resolved = base / resolved
    return FileClients(
        name=name,
        path=resolved,
        format="json" if list_format == "json" else "lines",
        json_path=json_path,
        interval=interval,
        max_stale=max_stale,
        max_shrink=check.fraction(table, path, "max_shrink"),
    )


HTTP_KEYS = {
    "name",
    "type",
    "url",
    "format",
    "json_path",
    "interval",
    "allow_insecure",
    "ca_file",
    "token_file",
    "timeout",
    "max_bytes",
    "max_stale",
    "max_shrink",
}


def _parse_http(
    check: Checker, spec: dict[str, Any], path: str, agent: AgentConfig, base: Path | None
) -> HttpClients | None:
    table = check.table(spec, path, HTTP_KEYS, required={"name", "url"})
    name = _group_name(check, table, path)
    insecure = check.boolean(table, path, "allow_insecure", False)
    url = check.string(table, path, "url", None)
    url_ok = url is not None and _check_url(check, f"{path}.url", url, allow_insecure=insecure)
    list_format = check.choice(table, path, "format", "lines", ("lines", "json"))
    json_path = check.string(table, path, "json_path", None)
    if json_path is not None and list_format != "json":
        check.problem(f"{path}.json_path", 'only applies with format = "json"')
    if "token" in spec:
        check.problem(f"{path}.token", "never write a token in the config: use token_file")
    options = HttpOptions(
        url=url or "",
        allow_insecure=insecure,
        ca_file=_path(check.string(table, path, "ca_file", None), base),
        token_file=_path(check.string(table, path, "token_file", None), base),
        timeout=check.duration(table, path, "timeout", 10.0, low=0.1),
        max_bytes=check.integer(table, path, "max_bytes", 16 * 1024 * 1024, low=1, high=2**31),
    )
    interval = check.duration(table, path, "interval", 300.0, low=1)
    if name is None or not url_ok:
        return None
    return HttpClients(
        name=name,
        http=options,
        format="json" if list_format == "json" else "lines",
        json_path=json_path,
        interval=interval,
        max_stale=_optional_duration(check, table, path, "max_stale"),
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
    name = _group_name(check, table, path)
    names = check.hostnames(table, path, "names")
    if "names" in table and not names and not check.problems:
        check.problem(f"{path}.names", "must name at least one host")
    min_refresh, max_refresh = _refresh_bounds(check, table, path)
    if name is None:
        return None
    return DnsClients(
        name=name,
        names=tuple(names),
        min_refresh=min_refresh,
        max_refresh=max_refresh,
        max_addresses=check.integer(table, path, "max_addresses", 8, low=1, high=1024),
        max_stale=_optional_duration(check, table, path, "max_stale"),
        max_shrink=check.fraction(table, path, "max_shrink"),
    )


ClientParser = Callable[
    ["Checker", dict[str, Any], str, AgentConfig, Path | None], ClientGroup | None
]
CLIENT_TYPES: dict[str, ClientParser] = {
    "static": _parse_static,
    "file": _parse_file,
    "http": _parse_http,
    "dns": _parse_dns,
}


def _parse_rules(
    check: Checker,
    raw: object,
    destinations: Mapping[str, Destination],
    clients: tuple[ClientGroup, ...],
) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        check.problem("rules", "must be an array of tables ([[rules]])")
        return ()
    group_names = {group.name for group in clients}
    rules: list[Rule] = []
    for index, spec in enumerate(raw):
        path = f"rules[{index}]"
        table = check.table(
            spec, path, {"clients", "destinations", "ports"}, required={"clients", "destinations"}
        )
        names = {
            "clients": check.list_of(table, path, "clients", str, []),
            "destinations": check.list_of(table, path, "destinations", str, []),
        }
        known = {"clients": group_names, "destinations": set(destinations)}
        for key, listed in names.items():
            for position, name in enumerate(listed):
                if name not in known[key]:
                    check.problem(
                        f"{path}.{key}[{position}]",
                        f"{name!r} is not a defined {key[:-1].replace('client', 'client group')}"
                        + did_you_mean(name, known[key]),
                    )
            if key in table and not listed:
                check.problem(f"{path}.{key}", "must name at least one")
        ports = check.ports(table, path, "ports", required=False)
        if ports is not None:
            offered = {
                port
                for name in names["destinations"]
                if name in destinations
                for port in destinations[name].ports
            }
            for position, port in enumerate(ports):
                if offered and port not in offered:
                    check.problem(
                        f"{path}.ports[{position}]",
                        f"{port} is not a port of {', '.join(names['destinations'])} "
                        f"({', '.join(map(str, sorted(offered)))})",
                    )
        rules.append(
            Rule(
                tuple(names["clients"]),
                tuple(names["destinations"]),
                tuple(ports) if ports is not None else None,
            )
        )
    return tuple(rules)
