"""Read the TOML config into frozen dataclasses, checking everything up front.

Every problem is collected with its key path (`clients[0].addresses[3]`) and
raised together as one ConfigError, so an admin fixes a file in one pass and an
invalid file never changes the kernel.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repogate.addresses import canonical_address
from repogate.config.checks import IFNAME_PATTERN, Checker, did_you_mean
from repogate.config.clients import parse_clients
from repogate.config.destinations import parse_destinations
from repogate.config.devices import check_inventory_names
from repogate.config.egress import LISTEN_PATTERN, parse_egress, parse_probes, parse_why
from repogate.config.inventories import parse_enrolments, parse_inventories
from repogate.config.schema import (
    DEFAULT_METRICS_PORT,
    AgentConfig,
    AuditConfig,
    ClientGroup,
    Config,
    Destination,
    MetricsConfig,
    ResolverConfig,
    Rule,
)
from repogate.errors import ConfigError, ConfigProblem
from repogate.model import Hook

DEFAULT_CONFIG_PATH = Path("/etc/repogate/repogate.toml")
CONFIG_ENV = "REPOGATE_CONFIG"
HOOKS = ("forward", "output")
# The table name becomes part of every nft command.
TABLE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


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
        data,
        "",
        {
            "agent",
            "resolver",
            "metrics",
            "audit",
            "destinations",
            "inventories",
            "enrolments",
            "why",
            "egress",
            "probes",
            "clients",
            "rules",
        },
    )
    base = path.parent if path is not None else None
    agent = _parse_agent(check, top.get("agent", {}))
    resolver = _parse_resolver(check, top.get("resolver", {}))
    destinations = parse_destinations(check, top.get("destinations"), base)
    inventories = parse_inventories(check, top.get("inventories"), base)
    inventories = parse_enrolments(check, top.get("enrolments"), base, inventories)
    clients = parse_clients(check, top.get("clients"), agent, base)
    check_inventory_names(check, top.get("clients"), clients, inventories)
    rules = _parse_rules(check, top.get("rules", []), destinations, clients)
    metrics = _parse_metrics(check, top.get("metrics", {}), base)
    audit_table = check.table(top.get("audit", {}), "audit", {"path"})
    audit = AuditConfig(path=check.file(audit_table, "audit", "path", base))
    why = parse_why(check, top.get("why", {}))
    egress = parse_egress(check, top.get("egress", {}))
    probes = parse_probes(check, top.get("probes"), base)
    if check.problems:
        raise ConfigError(check.problems, str(path) if path else "")
    return Config(
        agent,
        destinations,
        clients,
        rules,
        path,
        resolver,
        metrics,
        audit,
        inventories,
        why,
        egress,
        probes,
    )


def _parse_metrics(check: Checker, raw: object, base: Path | None) -> MetricsConfig:
    keys = {
        "listen",
        "tls_cert_file",
        "tls_key_file",
        "basic_auth_user",
        "basic_auth_password_file",
    }
    table = check.table(raw, "metrics", keys)
    host: str | None = None
    port = DEFAULT_METRICS_PORT
    default = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
    # "" turns metrics off, so it must not reach check.string, which refuses empty strings.
    listen = "" if table.get("listen") == "" else check.string(table, "metrics", "listen", default)
    if listen:
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
        tls_cert_file=check.file(table, "metrics", "tls_cert_file", base),
        tls_key_file=check.file(table, "metrics", "tls_key_file", base),
        basic_auth_user=check.string(table, "metrics", "basic_auth_user", None),
        basic_auth_password_file=check.file(table, "metrics", "basic_auth_password_file", base),
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
