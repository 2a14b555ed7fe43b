"""Derive the lab's repogate config from the shipped `config/repogate.toml`.

Starting from the shipped file (not a config invented here) means the lab exercises whatever
`[agent]` settings and extra sections real installs get; only what must point at the lab is
replaced:

  * `agent.state_dir` goes to a per-run temp dir, so the lab never touches /var/lib/repogate;
  * `destinations` becomes just `bitbucket`, with the fake Bitbucket's networks and ports
    (other shipped destinations name real hosts the lab cannot serve, and would only add
    rules and lookups that no probe looks at);
  * `clients` becomes one static `office` group of the lab's approved addresses;
  * `rules` are dropped, so `office` may reach every destination unless a test adds rules.

Callers then apply overrides with `merge`: mappings merge key by key, any other value
replaces, and None deletes the key.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.spec import LabSpec

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "repogate.toml"

# The documented schema, used only while the shipped config does not exist yet.
SKELETON: dict[str, Any] = {
    "agent": {"table": "repogate", "state_dir": "/var/lib/repogate"},
    "destinations": {
        "bitbucket": {"networks": ["104.192.136.0/21", "2401:1d80:1010::/48"], "ports": [22, 443]}
    },
    "clients": [{"name": "office", "type": "static", "addresses": ["10.20.0.0/16"]}],
}

DEFAULT_TABLE = "repogate"


@dataclass(frozen=True)
class BaseConfig:
    """The config the lab starts from, and where it came from (shown by the demo)."""

    data: Mapping[str, Any]
    source: str


def load_shipped(path: Path = SHIPPED_CONFIG) -> BaseConfig:
    """Read the shipped config, or fall back to the skeleton (saying so) if it is missing."""
    if not path.exists():
        return BaseConfig(copy.deepcopy(SKELETON), f"built-in skeleton ({path} not found)")
    try:
        with path.open("rb") as fh:
            return BaseConfig(tomllib.load(fh), str(path))
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"shipped config {path} is not valid TOML: {exc}") from exc


def office_group(addresses: Sequence[str]) -> dict[str, Any]:
    """The lab's approved client group, for callers that rebuild `clients` with extras."""
    return {"name": "office", "type": "static", "addresses": list(addresses)}


def derive(base: Mapping[str, Any], spec: LabSpec, state_dir: Path) -> dict[str, Any]:
    """Return the lab config for `spec`, keeping everything of `base` that is not lab-specific."""
    config = {
        key: copy.deepcopy(value)
        for key, value in base.items()
        if key not in ("destinations", "clients", "rules", "resolver")
    }
    agent = dict(config.get("agent", {}))
    agent["state_dir"] = str(state_dir)
    config["agent"] = agent
    shipped_bitbucket = base.get("destinations", {}).get("bitbucket", {})
    # The preset's real host names and Atlassian's feed are out of the lab's reach:
    # the fake Bitbucket is given by its networks (tests add lab DNS names as hosts).
    bitbucket = {
        key: copy.deepcopy(value)
        for key, value in shipped_bitbucket.items()
        if key not in ("preset", "hosts") and not key.startswith("feed_")
    }
    bitbucket["networks"] = list(spec.bitbucket_networks)
    bitbucket["ports"] = list(spec.bitbucket_ports)
    config["destinations"] = {"bitbucket": bitbucket}
    config["clients"] = [office_group(spec.office_addresses)]
    return config


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep-merge overrides into a copy of base: tables merge, values replace, None deletes."""
    result = copy.deepcopy(dict(base))
    for key, value in (overrides or {}).items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def table_name(config: Mapping[str, Any]) -> str:
    """The nftables table repogate will manage for this config."""
    return str(config.get("agent", {}).get("table", DEFAULT_TABLE))
