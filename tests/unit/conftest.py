"""Shared fixtures for the pure unit tests: configs, listings and a fake kernel.

Nothing here needs root or libnftables. `FakeKernel` is a Backend that applies
libnftables JSON transactions to an in-memory table with the kernel checks that
matter for repogate's transactions, and lists the table the way `nft -j list
table` does, so a sync can be run twice and must converge.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from repogate.audit import AuditLog
from repogate.config import Config, parse_config
from repogate.engine import Engine, Generation, Inputs, Outcome
from repogate.errors import NftError
from repogate.instance import Instance
from repogate.lastgood import resolve
from repogate.model import CounterValue, DesiredState, KernelTable, NatRule, Plan
from repogate.nft.builders import transaction
from repogate.nft.layout import chain_names, expected_rule_comments
from repogate.nft.names import OWNER_COUNTER, base_chain, owner_comment
from repogate.nft.parse import parse_table
from repogate.plan import desired_state
from repogate.sources import collect
from repogate.state import StateStore

Json = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "config" / "repogate.toml"

TEST_INSTANCE = "test0instance"
TEST_MARK = owner_comment(TEST_INSTANCE)

BASE_TOML = """\
[agent]
table = "repogate"

[destinations.bitbucket]
networks = ["104.192.136.0/21", "185.166.140.0/22", "2401:1d80:1010::/48"]
ports = [22, 443]

[[clients]]
name = "office"
type = "static"
addresses = ["10.20.0.0/16", "10.9.8.7", "2001:db8:20::/48", "2001:db8::5"]

[[clients]]
name = "vpn"
type = "static"
addresses = ["10.30.0.0/24"]
"""


def base_dict() -> dict[str, Any]:
    """The config of BASE_TOML as a decoded document, fresh for each caller to edit."""
    return {
        "agent": {"table": "repogate"},
        "destinations": {
            "bitbucket": {
                "networks": ["104.192.136.0/21", "185.166.140.0/22", "2401:1d80:1010::/48"],
                "ports": [22, 443],
            }
        },
        "clients": [
            {
                "name": "office",
                "type": "static",
                "addresses": ["10.20.0.0/16", "10.9.8.7", "2001:db8:20::/48", "2001:db8::5"],
            },
            {"name": "vpn", "type": "static", "addresses": ["10.30.0.0/24"]},
        ],
    }


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up the developer's $REPOGATE_CONFIG."""
    monkeypatch.delenv("REPOGATE_CONFIG", raising=False)


@pytest.fixture
def shipped_config() -> Path:
    return SHIPPED_CONFIG


@pytest.fixture
def base_toml() -> str:
    return BASE_TOML


@pytest.fixture
def config_dict() -> dict[str, Any]:
    return base_dict()


@pytest.fixture
def base_config() -> Config:
    return parse_config(base_dict())


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to a fresh file and return its path."""
    counter = iter(range(1000))

    def write(text: str) -> Path:
        # Keep state and the audit trail in the test's own directory, never /var/lib.
        if "[agent]\n" in text and "state_dir" not in text:
            text = text.replace("[agent]\n", f'[agent]\nstate_dir = "{tmp_path / "state"}"\n', 1)
        # The test instance's id, so tables built from `desired_of` carry its mark.
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        (state / "instance.json").write_text(json.dumps({"id": TEST_INSTANCE, "table": None}))
        path = tmp_path / f"repogate-{next(counter)}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def desired_of(config: Config, current: KernelTable | None = None) -> DesiredState:
    """The desired state for a config, its sources read as `sync` reads them (no mark)."""
    collected = collect(config)
    resolved = resolve(
        config,
        results=collected.results,
        failures=collected.failures,
        store=None,
        current=current,
        now=time.time(),
    )
    return desired_state(config, resolved.groups, resolved.destinations, owner=TEST_MARK)


@pytest.fixture
def desired() -> Callable[..., DesiredState]:
    """desired(config, current=None): the DesiredState `sync` would aim for."""
    return desired_of


# --- a listing written from the desired state, independently of the builders ---


def listing_element(text: str) -> Any:
    """nft's JSON form of one element: a plain address, a prefix or a range."""
    if "/" in text:
        address, _, length = text.partition("/")
        return {"prefix": {"addr": address, "len": int(length)}}
    if "-" in text:
        low, _, high = text.partition("-")
        return {"range": [low, high]}
    return text


def listing_from_desired(
    desired: DesiredState, counters: dict[str, tuple[int, int]] | None = None
) -> list[Json]:
    """What `nft -j list table` prints once the desired table is in the kernel."""
    table = desired.table
    ref = {"family": "inet", "table": table}
    items: list[Json] = [
        {
            "metainfo": {
                "version": "1.0.6",
                "release_name": "Lester Gooch #5",
                "json_schema_version": 1,
            }
        },
        {"table": {"family": "inet", "name": table, "handle": 1}},
    ]
    handle = iter(range(2, 100_000))
    if desired.owner:
        owner = {**ref, "name": OWNER_COUNTER, "handle": next(handle), "comment": desired.owner}
        items.append({"counter": {**owner, "packets": 0, "bytes": 0}})
    for name in desired.counters:
        packets, octets = (counters or {}).get(name, (0, 0))
        items.append(
            {
                "counter": {
                    **ref,
                    "name": name,
                    "handle": next(handle),
                    "packets": packets,
                    "bytes": octets,
                }
            }
        )
    for spec in desired.sets.values():
        body: Json = {**ref, "name": spec.name, "type": spec.nft_type, "handle": next(handle)}
        if spec.interval:
            body["flags"] = ["interval"]
        if spec.elements:
            body["elem"] = [listing_element(text) for text in sorted(spec.elements)]
        items.append({"set": body})
    for name in chain_names(desired):
        base = base_chain(name)
        chain: Json = {**ref, "name": name, "handle": next(handle)}
        if base is not None:
            chain.update(type=base.chain_type, hook=base.hook, prio=base.priority, policy="accept")
        items.append({"chain": chain})
    for name, comments in expected_rule_comments(desired).items():
        for comment in comments:
            rule = {**ref, "chain": name, "handle": next(handle), "comment": comment}
            items.append({"rule": rule})
    return items


def kernel_from_desired(
    desired: DesiredState, counters: dict[str, tuple[int, int]] | None = None
) -> KernelTable:
    return parse_table(desired.table, listing_from_desired(desired, counters))


# --- the fake kernel ---


class FakeKernelError(NftError):
    """The fake kernel refused a transaction (the real one would too)."""


def _span(text: str) -> tuple[int, int]:
    if "-" in text:
        low, _, high = text.partition("-")
        return int(ipaddress.ip_address(low)), int(ipaddress.ip_address(high))
    network = ipaddress.ip_network(text)
    return int(network.network_address), int(network.broadcast_address)


class FakeKernel:
    """One nftables ruleset in memory, changed only by whole transactions."""

    def __init__(self) -> None:
        self.tables: dict[str, Json] = {}
        self.transactions: list[list[Json]] = []
        self.genid = 1
        self.foreign_nat: list[NatRule] = []  # other tables' SNAT and masquerade

    # The Backend protocol.

    def read_table(self, table: str) -> KernelTable | None:
        if table not in self.tables:
            return None
        return parse_table(table, self.listing(table))

    def apply(self, commands: list[Json]) -> float:
        if not commands:
            return 0.0
        document = json.loads(json.dumps(transaction(commands)))  # must survive JSON
        items = document["nftables"]
        if items[0] != {"metainfo": {"json_schema_version": 1}}:
            raise FakeKernelError(f"no metainfo first: {items[0]!r}")
        tables = copy.deepcopy(self.tables)
        for index, command in enumerate(items[1:]):
            try:
                self._run(tables, command)
            except FakeKernelError as exc:
                raise FakeKernelError(f"command {index} {json.dumps(command)}: {exc}") from exc
        self.tables = tables  # all or nothing, like one kernel transaction
        self.transactions.append(commands)
        self.genid += 1
        return 0.0

    def generation(self) -> int:
        return self.genid

    def watch(self, table: str, on_foreign_change: Callable[[str], None]) -> None:
        return None  # no notifications: the daemon watches the generation id

    def nat_rules(self, exclude: str) -> list[NatRule]:
        return list(self.foreign_nat)

    def read_counters(self, table: str) -> dict[str, CounterValue]:
        current = self.read_table(table)
        return dict(current.counters) if current is not None else {}

    # Helpers for tests.

    def set_counter(self, table: str, name: str, packets: int, octets: int) -> None:
        self.tables[table]["counters"][name][:2] = [packets, octets]

    def elements(self, table: str, set_name: str) -> set[str]:
        return set(self.tables[table]["sets"][set_name]["elems"])

    def listing(self, table: str) -> list[Json]:
        state = self.tables[table]
        ref = {"family": "inet", "table": table}
        items: list[Json] = [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": table, "handle": 1}},
        ]
        handle = iter(range(2, 1_000_000))
        for name, (packets, octets, comment) in state["counters"].items():
            counter = {**ref, "name": name, "handle": next(handle), "packets": packets}
            counter["bytes"] = octets
            if comment is not None:
                counter["comment"] = comment
            items.append({"counter": counter})
        for name, spec in state["sets"].items():
            body: Json = {**ref, "name": name, "type": spec["type"], "handle": next(handle)}
            if spec["interval"]:
                body["flags"] = ["interval"]
            if spec["elems"]:
                body["elem"] = [listing_element(text) for text in sorted(spec["elems"])]
            items.append({"set": body})
        for name, chain in state["chains"].items():
            items.append({"chain": {**ref, "name": name, "handle": next(handle), **chain["base"]}})
        for name, chain in state["chains"].items():
            for rule in chain["rules"]:
                body = {**ref, "chain": name, "handle": next(handle), "expr": rule["expr"]}
                if rule.get("comment") is not None:
                    body["comment"] = rule["comment"]
                items.append({"rule": body})
        return items

    # The interpreter.

    def _run(self, tables: dict[str, Json], command: Json) -> None:
        ((verb, payload),) = command.items()
        ((kind, body),) = payload.items()
        if body.get("family") != "inet":
            raise FakeKernelError(f"family {body.get('family')!r}")
        if kind == "table":
            if verb == "add":
                tables.setdefault(body["name"], {"sets": {}, "counters": {}, "chains": {}})
            elif verb == "delete":
                self._table(tables, body["name"])
                del tables[body["name"]]
            else:
                raise FakeKernelError(f"{verb} table")
            return
        state = self._table(tables, body["table"])
        handler = getattr(self, f"_{verb}_{kind}", None)
        if handler is None:
            raise FakeKernelError(f"unsupported command {verb} {kind}")
        handler(state, body)

    @staticmethod
    def _table(tables: dict[str, Json], name: str) -> Json:
        if name not in tables:
            raise FakeKernelError(f"No such file or directory: table {name}")
        table: Json = tables[name]
        return table

    @staticmethod
    def _rules(state: Json) -> Iterator[Json]:
        for chain in state["chains"].values():
            yield from chain["rules"]

    def _references(self, state: Json) -> list[str]:
        found: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "right" and isinstance(value, str) and value.startswith("@"):
                        found.append(f"set:{value[1:]}")
                    elif key == "counter" and isinstance(value, str):
                        found.append(f"counter:{value}")
                    elif key == "jump":
                        found.append(f"chain:{value['target']}")
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        for rule in self._rules(state):
            walk(rule["expr"])
        return found

    # Sets and elements.

    def _add_set(self, state: Json, body: Json) -> None:
        interval = "interval" in body.get("flags", [])
        existing = state["sets"].get(body["name"])
        if existing is not None:
            if (existing["type"], existing["interval"]) != (body["type"], interval):
                raise FakeKernelError(f"File exists: set {body['name']} with another type")
            return
        if body["type"] not in ("ipv4_addr", "ipv6_addr"):
            raise FakeKernelError(f"unexpected set type {body['type']!r}")
        state["sets"][body["name"]] = {"type": body["type"], "interval": interval, "elems": set()}

    def _set(self, state: Json, name: str) -> Json:
        if name not in state["sets"]:
            raise FakeKernelError(f"No such file or directory: set {name}")
        found: Json = state["sets"][name]
        return found

    def _delete_set(self, state: Json, body: Json) -> None:
        self._set(state, body["name"])
        if f"set:{body['name']}" in self._references(state):
            raise FakeKernelError(f"Device or resource busy: set {body['name']} is in use")
        del state["sets"][body["name"]]

    def _flush_set(self, state: Json, body: Json) -> None:
        self._set(state, body["name"])["elems"] = set()

    def _element_text(self, spec: Json, raw: Any) -> str:
        family = socket.AF_INET if spec["type"] == "ipv4_addr" else socket.AF_INET6
        maxlen = 32 if family == socket.AF_INET else 128

        def address(text: Any) -> str:
            try:
                return socket.inet_ntop(family, socket.inet_pton(family, text))
            except (OSError, TypeError) as exc:
                raise FakeKernelError(f"Could not resolve hostname: {text!r}") from exc

        if isinstance(raw, str):
            return address(raw)
        if not spec["interval"]:
            raise FakeKernelError("Set member cannot be range, missing interval flag")
        if isinstance(raw, dict) and "prefix" in raw:
            addr, length = address(raw["prefix"]["addr"]), raw["prefix"]["len"]
            if not isinstance(length, int) or not 0 <= length <= maxlen:
                raise FakeKernelError(f"bad prefix length {length!r}")
            network = ipaddress.ip_network(f"{addr}/{length}", strict=False)
            if str(network.network_address) != str(ipaddress.ip_address(addr)):
                raise FakeKernelError(f"prefix {addr}/{length} has host bits set")
            return addr if length == maxlen else f"{addr}/{length}"
        if isinstance(raw, dict) and "range" in raw:
            low, high = (address(text) for text in raw["range"])
            return f"{low}-{high}"
        raise FakeKernelError(f"unsupported element {raw!r}")

    def _add_element(self, state: Json, body: Json) -> None:
        spec = self._set(state, body["name"])
        for raw in body["elem"]:
            text = self._element_text(spec, raw)
            if text in spec["elems"]:
                continue  # `add` of an existing element is not an error
            if spec["interval"]:
                low, high = _span(text)
                for other in spec["elems"]:
                    other_low, other_high = _span(other)
                    if low <= other_high and other_low <= high:
                        raise FakeKernelError(f"interval {text} overlaps {other}")
            spec["elems"].add(text)

    def _delete_element(self, state: Json, body: Json) -> None:
        spec = self._set(state, body["name"])
        for raw in body["elem"]:
            text = self._element_text(spec, raw)
            if text not in spec["elems"]:
                raise FakeKernelError(f"No such file or directory: element {text}")
            spec["elems"].discard(text)

    # Counters.

    def _add_counter(self, state: Json, body: Json) -> None:
        state["counters"].setdefault(body["name"], [0, 0, body.get("comment")])

    def _delete_counter(self, state: Json, body: Json) -> None:
        if body["name"] not in state["counters"]:
            raise FakeKernelError(f"No such file or directory: counter {body['name']}")
        if f"counter:{body['name']}" in self._references(state):
            raise FakeKernelError(f"Device or resource busy: counter {body['name']}")
        del state["counters"][body["name"]]

    # Chains and rules.

    def _add_chain(self, state: Json, body: Json) -> None:
        base = {key: body[key] for key in ("type", "hook", "prio", "policy") if key in body}
        existing = state["chains"].get(body["name"])
        if existing is not None:
            if existing["base"] != base:
                raise FakeKernelError(f"Operation not supported: chain {body['name']} changes")
            return
        state["chains"][body["name"]] = {"base": base, "rules": []}

    def _chain(self, state: Json, name: str) -> Json:
        if name not in state["chains"]:
            raise FakeKernelError(f"No such file or directory: chain {name}")
        found: Json = state["chains"][name]
        return found

    def _flush_chain(self, state: Json, body: Json) -> None:
        self._chain(state, body["name"])["rules"] = []

    def _delete_chain(self, state: Json, body: Json) -> None:
        self._chain(state, body["name"])
        saved = state["chains"].pop(body["name"])
        if f"chain:{body['name']}" in self._references(state):
            state["chains"][body["name"]] = saved
            raise FakeKernelError(f"Device or resource busy: chain {body['name']} is a jump target")

    def _add_rule(self, state: Json, body: Json) -> None:
        chain = self._chain(state, body["chain"])
        for expr in body["expr"]:
            self._check_expr(state, expr)
        chain["rules"].append({"expr": body["expr"], "comment": body.get("comment")})

    @staticmethod
    def _check_iifname(expr: Json) -> None:
        right = expr["match"]["right"]
        if expr["match"]["left"]["meta"] == {"key": "l4proto"} and right == "tcp":
            return  # the TCP test a reset needs where no port match implies it
        names = right["set"] if isinstance(right, dict) else [right]
        if expr["match"]["left"]["meta"] != {"key": "iifname"} or not all(
            isinstance(name, str) and 0 < len(name) < 16 for name in names
        ):
            raise FakeKernelError(f"unexpected meta match {expr!r}")

    def _check_expr(self, state: Json, expr: Json) -> None:
        if "match" in expr and "meta" in expr["match"]["left"]:
            self._check_iifname(expr)
        elif "match" in expr:
            left, right = expr["match"]["left"]["payload"], expr["match"]["right"]
            if left["protocol"] in ("ip", "ip6"):
                if not (isinstance(right, str) and right.startswith("@")):
                    raise FakeKernelError(f"unexpected address match {right!r}")
                wanted = "ipv4_addr" if left["protocol"] == "ip" else "ipv6_addr"
                if self._set(state, right[1:])["type"] != wanted:
                    raise FakeKernelError(f"datatype mismatch: {right} for {left['protocol']}")
            elif left == {"protocol": "tcp", "field": "dport"}:
                ports = right["set"] if isinstance(right, dict) else [right]
                if not ports or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
                    raise FakeKernelError(f"Invalid RHS of relational: {right!r}")
            else:
                raise FakeKernelError(f"unexpected match {left!r}")
        elif "counter" in expr:
            if expr["counter"] not in state["counters"]:
                raise FakeKernelError(f"No such file or directory: counter {expr['counter']}")
        elif "jump" in expr:
            self._chain(state, expr["jump"]["target"])
        elif expr not in ({"accept": None}, {"reject": {"type": "tcp reset"}}):
            raise FakeKernelError(f"unexpected statement {expr!r}")


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def kernel_from() -> Callable[..., KernelTable]:
    """kernel_from(desired, counters=None): the KernelTable once `desired` is enforced."""
    return kernel_from_desired


@pytest.fixture
def listing_from() -> Callable[..., list[Json]]:
    """listing_from(desired, counters=None): `nft -j list table` once `desired` is enforced."""
    return listing_from_desired


# --- one sync through the engine, as `repogate sync` runs it ----------------------


@dataclass(frozen=True)
class SyncResult:
    outcome: Outcome
    inputs: Inputs
    generation: Generation

    @property
    def applied(self) -> bool:
        return self.outcome.applied

    @property
    def plan(self) -> Plan:
        return self.outcome.plan

    @property
    def desired(self) -> DesiredState:
        return self.outcome.desired

    @property
    def commands(self) -> list[Json]:
        return self.outcome.commands

    @property
    def failures(self) -> Mapping[str, str]:
        return self.inputs.failures


_ENGINES: dict[int, tuple[Instance, Path]] = {}


def engine_for(backend: Any, store: StateStore | None = None) -> Engine:
    """An engine with one instance id per backend, so syncs on one kernel agree."""
    if id(backend) not in _ENGINES:
        directory = Path(tempfile.mkdtemp(prefix="repogate-test-"))
        _ENGINES[id(backend)] = (
            Instance("test0instance", None, directory / "instance.json"),
            directory,
        )
    instance, directory = _ENGINES[id(backend)]
    if store is None:
        store = StateStore(directory)
        store.load()
    return Engine(backend, store, AuditLog(directory), instance)


def sync(
    config: Config,
    backend: Any,
    *,
    dry_run: bool = False,
    store: StateStore | None = None,
    accept_shrink: bool = False,
    adopt: bool = False,
) -> SyncResult:
    collected = collect(config)
    inputs = Inputs(collected.results, collected.failures)
    generation = Generation.of(config)
    outcome = engine_for(backend, store).reconcile(
        generation,
        inputs,
        reason="sync",
        verify=True,
        dry_run=dry_run,
        accept_shrink=accept_shrink,
        adopt=adopt,
    )
    return SyncResult(outcome, inputs, generation)


# --- a probe run as the unprivileged service user ---------------------------------

NOBODY = 65534


def run_unprivileged(probe: str, argument: str) -> dict[str, Any]:
    """Run `python -c probe argument` as `nobody` when root (via setpriv), else as
    ourselves, and return the JSON it prints: how the service user sees a file."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv (util-linux) to drop root")
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run(
        [*prefix, sys.executable, "-c", probe, argument],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO / "agent"), "PATH": os.environ.get("PATH", "")},
        timeout=60,
    )
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"{NOBODY} cannot read the checkout: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result
