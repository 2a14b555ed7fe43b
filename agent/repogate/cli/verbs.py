"""The verbs that touch the table or report on it: sync, status, explain, render, teardown.

When a daemon runs on the table (it holds the table's lock socket), `sync`,
`status` and `explain` ask it instead of working beside it: a second writer
would undo its changes, and only it knows what its sources said. Without a
daemon they run the engine here, and say so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repogate.addresses import contains
from repogate.audit import AuditLog
from repogate.config import Config
from repogate.config.devices import DEVICE_KEYS
from repogate.devices import DeviceRow, device_lines_for, device_rows, format_devices
from repogate.engine import Engine, Generation, Inputs, Outcome
from repogate.errors import RepogateError
from repogate.instance import Instance
from repogate.lastgood import last_fetched
from repogate.live import LiveView, destinations_of, from_json, source_views
from repogate.nft.backend import Backend, RecordingBackend
from repogate.nft.builders import transaction
from repogate.report import describe, describe_sources
from repogate.runtime import AlreadyRunningError, NoDaemonError, TableLock, ask
from repogate.sources import collect, specs
from repogate.sources.devices.source import DeviceSource
from repogate.state import StateStore

if TYPE_CHECKING:
    from repogate.cli.main import Invocation

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass
class Local:
    """The engine, run by this command because no daemon runs on the table."""

    engine: Engine
    generation: Generation


def local(config: Config, backend: Backend, *, read_only: bool = False) -> Local:
    state_dir = config.agent.state_dir
    store = StateStore(state_dir)
    store.load(read_only=read_only)  # status and explain report a bad file, never move it
    audit = AuditLog(state_dir, config.audit.path)
    return Local(Engine(backend, store, audit, Instance.load(state_dir)), Generation.of(config))


def sync(call: Invocation) -> int:
    args, config = call.args, call.config
    table = config.agent.table
    try:
        lock = TableLock(table, busy=f"a repogate sync (pid {os.getpid()}) is working on it")
    except AlreadyRunningError as exc:
        return _sync_through_daemon(call, exc.pid)
    with lock:
        here = local(config, call.backend())
        collected = collect(config)
        inputs = Inputs(collected.results, collected.failures)
        outcome = here.engine.reconcile(
            here.generation,
            inputs,
            reason="sync",
            verify=True,
            dry_run=args.dry_run,
            accept_shrink=args.accept_shrink,
            adopt=args.adopt,
        )
    for line in describe_sources(here.generation, inputs, outcome):
        print(line, file=call.out)
    prefix = "would " if args.dry_run and not outcome.plan.is_empty else ""
    for line in describe(outcome.plan, table):
        print(f"{prefix}{line}", file=call.out)
    if args.show_transaction and outcome.commands:
        print(json.dumps(transaction(outcome.commands), indent=1), file=call.out)
    if outcome.applied:
        print(
            _applied(outcome.plan.elements_added, outcome.plan.elements_deleted, outcome.seconds),
            file=call.out,
        )
    return _sync_exit(call, len(inputs.failures), len(outcome.held))


def _applied(added: int, deleted: int, seconds: float) -> str:
    return f"applied in one transaction: +{added} -{deleted} elements in {seconds * 1000:.1f} ms"


def _sync_exit(call: Invocation, failures: int, held: int) -> int:
    if failures:
        print(
            f"repogate: {failures} source(s) failed; they keep their last known good entries",
            file=call.err,
        )
        return EXIT_FAILURE
    if held:
        print(
            f"repogate: {held} source(s) held back for shrinking; check them, then "
            "`repogate sync --accept-shrink`",
            file=call.err,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _sync_through_daemon(call: Invocation, pid: int | None) -> int:
    args = call.args
    print(
        f"a daemon runs on table inet {call.config.agent.table} (pid {pid}): asking it",
        file=call.out,
    )
    answer = ask(
        call.config.agent.table,
        {
            "verb": "sync",
            "dry_run": args.dry_run,
            "accept_shrink": args.accept_shrink,
            "adopt": args.adopt,
        },
    )
    for line in answer.get("lines", []):
        print(line, file=call.out)
    if answer.get("applied"):
        print(_applied(answer["added"], answer["deleted"], answer["seconds"]), file=call.out)
    return _sync_exit(call, int(answer.get("failures", 0)), int(answer.get("held", 0)))


def status(call: Invocation) -> int:
    from repogate.cli.status import format_status  # noqa: PLC0415

    config = call.config
    try:
        answer = ask(config.agent.table, {"verb": "status"}, timeout=10.0)
        view, counters = from_json(answer["status"]), answer.get("counters", {})
    except NoDaemonError:
        view, counters = _local_view(call)
    recent = AuditLog(config.agent.state_dir).recent(10)
    egress = _egress(config)
    if call.args.json:
        document = {
            **view.to_json(),
            "counters": _traffic_json(counters),
            "egress_addresses": [{"interface": i, "address": a} for i, a in egress],
            "recent_changes": recent,
        }
        json.dump(document, call.out, indent=2)
        call.out.write("\n")
        return EXIT_OK
    lines = format_status(view, counters, egress)
    lines += ["", "recent changes (audit trail):", *_changes(recent)]
    call.out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _local_view(call: Invocation) -> tuple[LiveView, dict[str, Any]]:
    """What the kernel and state_dir hold, built the way the daemon builds its view."""
    config = call.config
    backend = call.backend()
    here = local(config, backend, read_only=True)
    collected = collect(config, network=False)
    inputs = Inputs(collected.results, collected.failures)
    notes: list[str] = here.engine.store.notes()
    try:
        outcome = here.engine.reconcile(here.generation, inputs, reason="status", dry_run=True)
    except RepogateError as exc:
        notes.append(str(exc))
        outcome = _offline(config, inputs)
    last_success = last_fetched(here.engine.store)
    counters = (
        backend.read_counters(config.agent.table) if hasattr(backend, "read_counters") else {}
    )
    view = LiveView(
        table=config.agent.table,
        daemon_pid=None,
        sources=source_views(
            here.generation,
            outcome,
            results=inputs.results,
            failures=inputs.failures,
            last_success=last_success,
        ),
        destinations=destinations_of(here.generation, outcome),
        groups={name: len(entries) for name, entries in outcome.desired.groups.items()},
        sets={name: len(spec.elements) for name, spec in outcome.desired.sets.items()},
        in_sync=outcome.plan.is_empty and here.engine.model is not None,
        present=here.engine.model is not None,
        pending={"add": outcome.plan.elements_added, "delete": outcome.plan.elements_deleted},
        config=str(config.path or ""),
        notes=tuple(notes),
    )
    return view, {name: [value.packets, value.bytes] for name, value in counters.items()}


def _offline(config: Config, inputs: Inputs) -> Outcome:
    """The desired state without the kernel (render, or a table that is not ours)."""
    state_dir = config.agent.state_dir
    store = StateStore(state_dir)
    store.load(read_only=True)
    engine = Engine(RecordingBackend(), store, AuditLog(state_dir), Instance.load(state_dir))
    return engine.reconcile(Generation.of(config), inputs, reason="render", dry_run=True)


def render(call: Invocation) -> int:
    from repogate.nft.render import render as render_table  # noqa: PLC0415

    collected = collect(call.config, network=False)
    outcome = _offline(call.config, Inputs(collected.results, collected.failures))
    call.out.write(render_table(outcome.desired))
    return EXIT_OK


def explain(call: Invocation) -> int:
    from repogate.explain import explain as explain_address  # noqa: PLC0415
    from repogate.explain import format_explanation  # noqa: PLC0415

    config, address = call.config, call.args.address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        print(f"repogate: {address!r} is not an IP address", file=call.err)
        return EXIT_USAGE
    try:
        lines = list(ask(config.agent.table, {"verb": "explain", "address": str(ip)})["lines"])
    except NoDaemonError:
        collected = collect(config, network=False)
        inputs = Inputs(collected.results, collected.failures)
        try:  # explain still answers from the config without nftables access
            here = local(config, call.backend(), read_only=True)
            outcome = here.engine.reconcile(here.generation, inputs, reason="explain", dry_run=True)
            current = here.engine.model
        except RepogateError:
            outcome, current = _offline(config, inputs), None
        found = explain_address(config, outcome.desired, current, str(ip))
        lines = device_lines_for(str(ip), _local_device_sources(config))
        lines += format_explanation(found, held_sources=list(outcome.held))
    trail = AuditLog(config.agent.state_dir).trail(str(ip))
    lines += ["", f"audit trail of {ip}:"]
    for line in trail[-20:]:
        admitted = any(contains(entry, ip) for entry in line.get("added", []))
        verb = "admitted" if admitted else "removed"
        lines.append(
            f"  {line['time']}  {verb} via {line['set']} ({line['owner']}, {line['reason']})"
        )
    if not trail:
        lines.append("  no recorded change touches it")
    call.out.write("\n".join(lines) + "\n")
    return EXIT_OK


def devices(call: Invocation) -> int:
    config = call.config
    try:
        answer = ask(config.agent.table, {"verb": "devices"}, timeout=10.0)
        rows = [
            DeviceRow(**{**row, "addresses": tuple(row["addresses"])}) for row in answer["devices"]
        ]
        note = ""
    except NoDaemonError:
        rows = device_rows(_local_device_sources(config))
        note = "(no daemon runs on this table: the maps and inventories were read just now)"
    if call.args.json:
        json.dump([row.to_json() for row in rows], call.out, indent=2)
        call.out.write("\n")
        return EXIT_OK
    lines = format_devices(rows) + ([note] if note else [])
    call.out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _local_device_sources(config: Config) -> dict[str, DeviceSource]:
    """Device groups read here and now (no daemon): each judged as the daemon would."""
    found: dict[str, DeviceSource] = {}
    for spec in specs(config):
        source = spec.make() if spec.kind in DEVICE_KEYS else None
        if isinstance(source, DeviceSource):
            with contextlib.suppress(RepogateError):  # no verdicts; status says why
                source.fetch()
            found[spec.key] = source
    return found


def teardown(call: Invocation) -> int:
    config = call.config
    try:
        lock = TableLock(config.agent.table, busy=f"a teardown (pid {os.getpid()}) runs")
    except AlreadyRunningError as exc:
        raise RepogateError(
            f'{exc}: stop the service first (with agent.on_stop = "remove" it deletes '
            "the table itself)"
        ) from exc
    with lock:
        here = local(config, call.backend())
        if not here.engine.delete_table(config.agent.table, "teardown"):
            print(f"table inet {config.agent.table}: not present, nothing to do", file=call.out)
            return EXIT_OK
    print(f"table inet {config.agent.table}: deleted", file=call.out)
    return EXIT_OK


def _traffic_json(counters: dict[str, Any]) -> dict[str, Any]:
    """{destination: {verdict: {packets, bytes}}} from the named counters."""
    found: dict[str, Any] = {}
    for name, value in counters.items():
        verdict, _, destination = name.partition("_")
        if verdict in ("allowed", "denied") and destination and isinstance(value, list):
            found.setdefault(destination, {})[verdict] = {"packets": value[0], "bytes": value[1]}
    return found


def _changes(lines: list[dict[str, Any]]) -> list[str]:
    if not lines:
        return ["  none recorded"]
    shown = []
    for line in lines:
        if "event" in line:
            shown.append(f"  {line['time']}  {line['event']} ({line['reason']})")
            continue
        added, removed = line.get("added", []), line.get("removed", [])
        parts = [f"+{len(added)} {' '.join(added[:3])}" if added else ""]
        parts.append(f"-{len(removed)} {' '.join(removed[:3])}" if removed else "")
        text = "; ".join(p.strip() for p in parts if p)
        shown.append(f"  {line['time']}  {line['owner']}: {line['set']} {text} ({line['reason']})")
    return shown


def _egress(config: Config) -> tuple[tuple[str, str], ...]:
    """The host's egress addresses, or none if netlink cannot be read here."""
    try:
        from repogate.daemon import netlink  # noqa: PLC0415 - pyroute2 only when needed

        interfaces = netlink.egress_interfaces(config.agent.egress_interfaces)
        return tuple((a.interface, a.address) for a in netlink.interface_addresses(interfaces))
    except Exception:  # status must work without pyroute2 or netlink access
        return ()
