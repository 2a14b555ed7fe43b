"""The config layer: the schema (frozen dataclasses, the one place defaults live),
the parser that checks a TOML document and names every problem by its key path
(parse, with clients and destinations beside it and the shared accessors in checks),
and the presets. Everything below it (sources, plan, nft) reads these types only.
"""

from repogate.config.destinations import DESTINATION_PREFIX_LIMITS
from repogate.config.parse import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    config_path,
    load_config,
    parse_config,
)
from repogate.config.schema import (
    AgentConfig,
    AuditConfig,
    ClientGroup,
    Config,
    Destination,
    DeviceClients,
    DnsClients,
    FeedConfig,
    FileClients,
    Grant,
    HttpClients,
    HttpOptions,
    Inventory,
    MetricsConfig,
    ResolverConfig,
    Rule,
    StaticClients,
)
from repogate.model import Hook

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DESTINATION_PREFIX_LIMITS",
    "AgentConfig",
    "AuditConfig",
    "ClientGroup",
    "Config",
    "Destination",
    "DeviceClients",
    "DnsClients",
    "FeedConfig",
    "FileClients",
    "Grant",
    "Hook",
    "HttpClients",
    "HttpOptions",
    "Inventory",
    "MetricsConfig",
    "ResolverConfig",
    "Rule",
    "StaticClients",
    "config_path",
    "load_config",
    "parse_config",
]
