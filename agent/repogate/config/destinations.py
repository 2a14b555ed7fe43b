"""The [destinations.*] tables: networks, host names, ports, and presets with their feed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repogate.config.checks import Checker, check_url, refresh_bounds
from repogate.config.presets import PRESETS
from repogate.config.schema import Destination, FeedConfig, HttpOptions

# A destination broader than this is almost surely a typo (0.0.0.0/0 would reset every
# unapproved SSH and HTTPS connection through the host).
DESTINATION_PREFIX_LIMITS = {4: 8, 6: 16}

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


def parse_destinations(check: Checker, raw: object, base: Path | None) -> dict[str, Destination]:
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
        if url and check_url(check, f"{path}.feed_url", url, allow_insecure=False):
            ca_file = check.file(table, path, "feed_ca_file", base)
            feed = FeedConfig(
                http=HttpOptions(url=url, ca_file=ca_file, timeout=30.0),
                products=preset.feed_products,
                directions=preset.feed_directions,
                interval=check.duration(table, path, "feed_interval", 6 * 3600.0, low=60),
            )
    else:
        for key in ("feed_url", "feed_ca_file", "feed_interval"):
            if key in table:
                check.problem(f"{path}.{key}", "only applies with a preset")
    min_refresh, max_refresh = refresh_bounds(check, table, path)
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
