"""[[inventories]] and [[enrolments]]: who is compliant, and which VPN identities are whose.

Five types: a CSV or JSON list in a `file` or fetched over `http`, or an MDM read
through its API (`intune`, `jamf`, `fleet`). Each MDM type has its own required keys
(a tenant, a client id, a secret file, a compliant group) and refuses the others',
so a copied block from another vendor is an error at its key path, not a silently
ignored setting. Secrets are named by file (`client_secret_file`, `token_file`):
the config holds no secret and can be shown to anyone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from repogate.config.checks import Checker, check_url, did_you_mean, group_name, optional_duration
from repogate.config.schema import (
    INTUNE_STATES,
    MDM_VENDORS,
    HttpOptions,
    Inventory,
    MdmOptions,
)

TYPES = ("file", "http", *MDM_VENDORS)
COMMON = {"name", "type", "max_age", "interval", "max_stale"}
HTTP_COMMON = {"ca_file", "timeout", "max_bytes"}
KEYS = {
    "file": {"path", "format"},
    "http": {"url", "format", "allow_insecure", "token_file"} | HTTP_COMMON,
    "intune": {"tenant", "client_id", "client_secret_file", "compliant_states", "authority"}
    | {"graph"}
    | HTTP_COMMON,
    "jamf": {"url", "client_id", "client_secret_file", "compliant_group", "page_size"}
    | HTTP_COMMON,
    "fleet": {"url", "token_file", "policies", "page_size"} | HTTP_COMMON,
}
REQUIRED = {
    "file": {"path", "format"},
    "http": {"url", "format"},
    "intune": {"tenant", "client_id", "client_secret_file"},
    "jamf": {"url", "client_id", "client_secret_file", "compliant_group"},
    "fleet": {"url", "token_file"},
}
DEFAULT_INTERVAL = {"file": 10.0, "http": 300.0}
MDM_INTERVAL = 600.0  # the vendors' sync cycles are minutes to hours; 10 min costs little
GRAPH = "https://graph.microsoft.com"
AUTHORITY = "https://login.microsoftonline.com"


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
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in TYPES:
        check.table(spec, path, None, required={"name", "type"})
        if kind is not None:
            check.problem(f"{path}.type", f"{kind!r} is not one of: {', '.join(TYPES)}")
        return None
    allowed = COMMON | KEYS[kind]
    table = check.table(spec, path, None, required={"name"})
    for key in table:
        if key in allowed:
            continue
        owners = [other for other in TYPES if key in KEYS[other]]
        if owners:
            types = " or ".join(f'"{other}"' for other in owners)
            check.problem(f"{path}.{key}", f"only applies with type = {types}")
        else:
            check.problem(f"{path}.{key}", "unknown key" + did_you_mean(key, frozenset(allowed)))
    for key in sorted(REQUIRED[kind] - table.keys()):
        check.problem(f"{path}.{key}", f'is required with type = "{kind}"')
    name = group_name(check, table, path)
    list_format = check.choice(table, path, "format", "csv", ("csv", "json"))
    interval = check.duration(
        table, path, "interval", DEFAULT_INTERVAL.get(kind, MDM_INTERVAL), low=1
    )
    common: dict[str, Any] = {
        "max_age": optional_duration(check, table, path, "max_age"),
        "interval": interval,
        "max_stale": optional_duration(check, table, path, "max_stale"),
    }
    file_path: Path | None = None
    http: HttpOptions | None = None
    mdm: MdmOptions | None = None
    if kind == "file":
        file_path = check.file(table, path, "path", base)
    elif kind == "http":
        http = _http(check, table, path, base, str(table.get("url", "")), allow=True)
    else:
        mdm = _mdm(check, table, path, base, kind)
    if name is None or (file_path is None and http is None and mdm is None):
        return None
    return Inventory(
        name=name,
        format="json" if list_format == "json" else "csv",
        path=file_path,
        http=http,
        mdm=mdm,
        **common,
    )


def _http(
    check: Checker, table: dict[str, Any], path: str, base: Path | None, url: str, *, allow: bool
) -> HttpOptions | None:
    """The transport options; `allow`: whether allow_insecure may be set (MDMs: never)."""
    insecure = check.boolean(table, path, "allow_insecure", False) if allow else False
    key = "graph" if "graph" in table else "url"
    if not allow and url.lower().startswith("http://"):
        check.problem(f"{path}.{key}", f"{url!r}: an MDM's API is read over HTTPS only")
        return None
    if not url or not check_url(check, f"{path}.{key}", url, allow_insecure=insecure):
        return None
    return HttpOptions(
        url=url.rstrip("/") if not allow else url,
        allow_insecure=insecure,
        ca_file=check.file(table, path, "ca_file", base),
        token_file=check.file(table, path, "token_file", base),
        timeout=check.duration(table, path, "timeout", 10.0, low=0.1),
        max_bytes=check.integer(table, path, "max_bytes", 16 << 20, low=1, high=2**31),
    )


def _mdm(
    check: Checker, table: dict[str, Any], path: str, base: Path | None, vendor: str
) -> MdmOptions | None:
    url = str(table.get("graph", GRAPH) if vendor == "intune" else table.get("url", ""))
    http = _http(check, table, path, base, url, allow=False)
    authority = check.string(table, path, "authority", AUTHORITY) or AUTHORITY
    if vendor == "intune":
        check_url(check, f"{path}.authority", authority, allow_insecure=False)
    states = tuple(check.list_of(table, path, "compliant_states", str, ["compliant"]))
    for index, state in enumerate(states):
        if state not in INTUNE_STATES:
            check.problem(
                f"{path}.compliant_states[{index}]",
                f"{state!r} is not an Intune complianceState"
                + did_you_mean(state, frozenset(INTUNE_STATES)),
            )
    if not states:
        check.problem(f"{path}.compliant_states", "must name at least one state")
    policies = _policies(check, table, path)
    options = MdmOptions(
        vendor=vendor,  # type: ignore[arg-type]  # one of MDM_VENDORS, checked by the caller
        http=http or HttpOptions(url),
        authority=authority.rstrip("/"),
        tenant=check.string(table, path, "tenant", None) or "",
        client_id=check.string(table, path, "client_id", None) or "",
        client_secret_file=check.file(table, path, "client_secret_file", base),
        compliant_states=states,
        compliant_group=check.string(table, path, "compliant_group", None) or "",
        policies=policies,
        page_size=check.integer(table, path, "page_size", 100, low=1, high=1000),
    )
    return options if http is not None else None


def _policies(check: Checker, table: dict[str, Any], path: str) -> tuple[int, ...]:
    raw = table.get("policies", [])
    if not isinstance(raw, list):
        check.problem(f"{path}.policies", "must be a list of Fleet policy ids")
        return ()
    found: list[int] = []
    for index, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            check.problem(f"{path}.policies[{index}]", f"{item!r} is not a Fleet policy id")
        else:
            found.append(item)
    return tuple(found)


def parse_enrolments(
    check: Checker, raw: object, base: Path | None, inventories: dict[str, Inventory]
) -> dict[str, Inventory]:
    """Attach each [[enrolments]] file to its inventory (several may name one)."""
    if raw is None:
        return inventories
    if not isinstance(raw, list):
        check.problem("enrolments", "must be an array of tables ([[enrolments]])")
        return inventories
    joined = dict(inventories)
    for index, spec in enumerate(raw):
        path = f"enrolments[{index}]"
        table = check.table(spec, path, {"inventory", "path"}, required={"inventory", "path"})
        name = check.string(table, path, "inventory", None)
        file_path = check.file(table, path, "path", base)
        if name is None or file_path is None:
            continue
        if name not in joined:
            check.problem(
                f"{path}.inventory",
                f"{name!r} is not a defined inventory" + did_you_mean(name, set(joined)),
            )
            continue
        inventory = joined[name]
        enrolments = (*inventory.enrolments, file_path)
        joined[name] = dataclasses.replace(inventory, enrolments=enrolments)
    return joined
