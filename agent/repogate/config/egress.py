"""[egress], [[probes]] and [why]: what Bitbucket sees of this host, and checks of it.

`[egress] addresses` are what the workspace's IP allowlist holds; with `snat = true`
repogate translates admitted flows to protected destinations to them, in its own
table. A probe checks the whole path as git uses it (SSH host key, smart HTTP with
a repository token). The why page answers each device on the gateway's own
addresses. All three are checked here with their key paths.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path
from typing import Any

from repogate.addresses import canonical_address
from repogate.config.checks import Checker, check_url, group_name
from repogate.config.schema import EgressConfig, Probe, WhyConfig

LISTEN_PATTERN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):(\d{1,5})")
TARGET_PATTERN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})")
PROBE_KEYS = {
    "ssh": {"target", "known_hosts"},
    "git-https": {"url", "token_file", "ca_file"},
}
COMMON_PROBE_KEYS = {"name", "type", "interval", "timeout"}


def parse_egress(check: Checker, raw: object) -> EgressConfig:
    table = check.table(raw, "egress", {"addresses", "snat"})
    found: list[str] = []
    for index, text in enumerate(check.list_of(table, "egress", "addresses", str, [])):
        canonical = canonical_address(text)
        if canonical is None or "/" in text:
            check.problem(f"egress.addresses[{index}]", f"{text!r} is not an IP address")
            continue
        address = ipaddress.ip_address(canonical[1])
        if address.is_unspecified or address.is_multicast or address.is_loopback:
            check.problem(f"egress.addresses[{index}]", f"{text!r} cannot be a source address")
        elif canonical[1] not in found:
            found.append(canonical[1])
    snat = check.boolean(table, "egress", "snat", False)
    if snat and not found:
        check.problem("egress.snat", "needs egress.addresses: the addresses to translate to")
    return EgressConfig(tuple(found), snat)


def parse_probes(check: Checker, raw: object, base: Path | None) -> tuple[Probe, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        check.problem("probes", "must be an array of tables ([[probes]])")
        return ()
    found: list[Probe] = []
    for index, spec in enumerate(raw):
        path = f"probes[{index}]"
        probe = _parse_probe(check, spec, path, base)
        if probe is None:
            continue
        if any(other.name == probe.name for other in found):
            check.problem(f"{path}.name", f"{probe.name!r} is already used")
            continue
        found.append(probe)
    return tuple(found)


def _parse_probe(check: Checker, spec: object, path: str, base: Path | None) -> Probe | None:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in PROBE_KEYS:
        check.table(spec, path, None, required={"name", "type"})
        if kind is not None:
            check.problem(f"{path}.type", f"{kind!r} is not one of: ssh, git-https")
        return None
    table = check.table(spec, path, COMMON_PROBE_KEYS | PROBE_KEYS[kind], required={"name"})
    name = group_name(check, table, path)
    common: dict[str, Any] = {
        "interval": check.duration(table, path, "interval", 60.0, low=5),
        "timeout": check.duration(table, path, "timeout", 10.0, low=0.5),
    }
    if kind == "ssh":
        target = check.string(table, path, "target", None)
        if target is None:
            check.problem(f"{path}.target", 'is required with type = "ssh" (HOST:PORT)')
        elif not _target_ok(target):
            check.problem(
                f"{path}.target", f"{target!r} is not HOST:PORT (like ssh.bitbucket.org:22)"
            )
        known_hosts = check.file(table, path, "known_hosts", base)
        if known_hosts is None and "known_hosts" not in table:
            check.problem(f"{path}.known_hosts", 'is required with type = "ssh"')
        if name is None or target is None or known_hosts is None:
            return None
        return Probe(name, "ssh", target=target, known_hosts=known_hosts, **common)
    url = check.string(table, path, "url", None)
    if url is None:
        check.problem(f"{path}.url", 'is required with type = "git-https"')
    elif check_url(check, f"{path}.url", url, allow_insecure=False) and not _names_repo(url):
        check.problem(f"{path}.url", f"{url!r} names no repository")
    token_file = check.file(table, path, "token_file", base)
    if name is None or url is None:
        return None
    ca_file = check.file(table, path, "ca_file", base)
    return Probe(
        name, "git-https", url=url.rstrip("/"), token_file=token_file, ca_file=ca_file, **common
    )


def _names_repo(url: str) -> bool:
    return bool(urllib.parse.urlsplit(url).path.strip("/"))


def _target_ok(target: str) -> bool:
    match = TARGET_PATTERN.fullmatch(target)
    return match is not None and 1 <= int(match.group(3)) <= 65535


def parse_why(check: Checker, raw: object) -> WhyConfig:
    """`listen`: one ADDRESS:PORT or a list; the addresses devices reach the host on
    (a VPN's or LAN's gateway address), never a wildcard: the page is for them only."""
    table = check.table(raw, "why", {"listen"})
    value = table.get("listen", [])
    listens = [value] if isinstance(value, str) else value
    if not isinstance(listens, list):
        check.problem("why.listen", "must be ADDRESS:PORT or a list of them")
        return WhyConfig()
    found: list[tuple[str, int]] = []
    for index, listen in enumerate(listens):
        where = "why.listen" if isinstance(value, str) else f"why.listen[{index}]"
        match = LISTEN_PATTERN.fullmatch(listen) if isinstance(listen, str) else None
        address = (match.group(1) or match.group(2)) if match else None
        canonical = canonical_address(address) if address else None
        if match is None or canonical is None or not 1 <= int(match.group(3)) <= 65535:
            check.problem(where, f'{listen!r} is not ADDRESS:PORT (like "10.30.0.1:8080")')
        elif ipaddress.ip_address(canonical[1]).is_unspecified:
            check.problem(where, f"{listen!r}: name the gateway's own address, not a wildcard")
        else:
            found.append((canonical[1], int(match.group(3))))
    return WhyConfig(tuple(found))
