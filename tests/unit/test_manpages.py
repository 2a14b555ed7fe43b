"""The man pages and README's reference cannot drift from the parser and the config.

repogate(8) is generated from the argument parser, repogate.toml(5) and README's
"Configuration reference" from repogate.config.reference; these tests fail when a
verb, an option or a config key the parser accepts is missing from them.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from repogate.cli.main import build_parser
from repogate.config import parse_config
from repogate.config.checks import Checker
from repogate.config.inventories import COMMON, KEYS
from repogate.config.reference import KEYS as REFERENCE
from repogate.config.reference import markdown_table
from tests.unit.conftest import base_dict

REPO = Path(__file__).parents[2]


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("manpages", REPO / "packaging" / "manpages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_reference_is_the_generated_table() -> None:
    assert markdown_table() in (REPO / "README.md").read_text(), (
        "README's configuration reference differs from repogate.config.reference: "
        "paste markdown_table() over it"
    )


def test_repogate_8_has_every_verb_and_option_of_the_parser() -> None:
    page = generator().repogate_8().replace("\\-", "-")
    parser = build_parser()
    verbs = generator().subparsers(parser)
    assert verbs, "no verbs found"
    for name, sub in verbs.items():
        assert f"\\fB{name}\\fR" in page, f"verb {name} missing from repogate(8)"
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in page, f"{name} {option} missing from repogate(8)"


def maximal_config(tmp_path: Path) -> dict[str, Any]:
    """One of every kind of section and group, so every table's keys get checked."""
    document = base_dict()
    secret = str(tmp_path / "secret")
    document["destinations"]["bb"] = {"preset": "bitbucket"}
    document["inventories"] = [
        {"name": "f", "type": "file", "path": "/x.csv", "format": "csv"},
        {"name": "h", "type": "http", "url": "https://x.test/d.csv", "format": "csv"},
        {
            "name": "i",
            "type": "intune",
            "tenant": "t",
            "client_id": "c",
            "client_secret_file": secret,
        },
        {
            "name": "j",
            "type": "jamf",
            "url": "https://j.test",
            "client_id": "c",
            "client_secret_file": secret,
            "compliant_group": "g",
        },
        {"name": "fl", "type": "fleet", "url": "https://f.test", "token_file": secret},
    ]
    document["enrolments"] = [{"inventory": "i", "path": "/e.csv"}]
    document["why"] = {"listen": "10.30.0.1:8080"}
    document["egress"] = {"addresses": ["203.0.113.7"], "snat": True}
    document["probes"] = [
        {"name": "s", "type": "ssh", "target": "ssh.bitbucket.org:22", "known_hosts": "/k"},
        {"name": "g", "type": "git-https", "url": "https://bitbucket.org/t/r.git"},
    ]
    document["resolver"] = {"nameservers": ["192.0.2.53"]}
    document["metrics"] = {"listen": "127.0.0.1:10419"}
    document["audit"] = {"path": "/var/log/repogate.jsonl"}
    document["clients"] += [
        {"name": "fi", "type": "file", "path": "/l.txt"},
        {"name": "ht", "type": "http", "url": "https://x.test/l.txt"},
        {"name": "dn", "type": "dns", "names": ["a.example"]},
        {"name": "wg", "type": "wireguard", "interface": "wg0", "inventory": "i"},
        {"name": "ov", "type": "openvpn", "status_file": "/s.log"},
        {"name": "dh", "type": "dhcp", "leases": "/l.leases"},
        {"name": "ne", "type": "neighbours", "interfaces": ["eth1"]},
    ]
    document["rules"] = [{"clients": ["office"], "destinations": ["bitbucket"]}]
    return document


def section(path: str) -> str:
    """clients[3] -> clients[], destinations.bb -> destinations.NAME."""
    path = re.sub(r"\[\d+\]", "[]", path)
    return re.sub(r"^destinations\.[^.]+", "destinations.NAME", path)


def test_every_key_the_parser_accepts_is_in_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted: set[tuple[str, str]] = set()
    original = Checker.table

    def recording(
        self: Checker, raw: object, path: str, allowed: Any, required: Any = frozenset()
    ) -> Any:
        for key in allowed or ():
            accepted.add((section(path), key))
        return original(self, raw, path, allowed, required)

    monkeypatch.setattr(Checker, "table", recording)
    parse_config(maximal_config(tmp_path))
    accepted |= {("inventories[]", key) for kind in KEYS for key in KEYS[kind] | COMMON}
    missing = []
    for parent, key in sorted(accepted):
        full = f"{parent}.{key}" if parent else key
        rows = [r for r in REFERENCE if r.key.strip("`").startswith(parent.split(".")[0])]
        known = any(
            full in r.key or f"`{key}`" in r.meaning or f"`{key}`" in r.key or f".{key}`" in r.key
            for r in rows
        )
        if not known:
            missing.append(full)
    assert not missing, f"config keys missing from repogate.config.reference: {missing}"


def test_the_pages_render_without_man_warnings(tmp_path: Path) -> None:
    if shutil.which("man") is None:
        pytest.skip("man (Debian: man-db) is not installed here")
    generator().main(["manpages", str(tmp_path)])
    for page in ("repogate.8", "repogate.toml.5"):
        result = subprocess.run(
            ["man", "--warnings", "-l", str(tmp_path / page)],
            capture_output=True,
            text=True,
            check=False,
            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
        )
        assert result.stderr == "", f"{page}: {result.stderr}"
