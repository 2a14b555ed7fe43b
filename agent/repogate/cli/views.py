"""The verbs that report: status, explain and devices (imported only when used, so
`repogate sync` does not pay for them at start-up).

With a daemon running on the table they ask it: only it knows what its sources
said; without one they read the kernel, the maps and state_dir here, and say so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import sys
from typing import TYPE_CHECKING, Any

from repogate.addresses import contains
from repogate.audit import AuditLog
from repogate.cli.verbs import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, _offline, local
from repogate.config import Config
from repogate.config.devices import DEVICE_KEYS
from repogate.devices import DeviceRow, device_lines_for, device_rows, format_devices
from repogate.egress import EgressReport
from repogate.engine import Inputs
from repogate.errors import NotOwnedTableError, RepogateError
from repogate.lastgood import last_fetched
from repogate.live import LiveView, destinations_of, from_json, source_views
from repogate.runtime import NoDaemonError, ask
from repogate.sources import collect, specs
from repogate.sources.devices.source import DeviceSource

if TYPE_CHECKING:
    from repogate.cli.main import Invocation


def status(call: Invocation) -> int:
    from repogate.cli.status import format_status  # noqa: PLC0415

    config = call.config
    report: EgressReport | None = None
    probes: list[dict[str, Any]] = []
    try:
        answer = ask(config.agent.table, {"verb": "status"}, timeout=10.0)
        view, counters = from_json(answer["status"]), answer.get("counters", {})
        probes = answer.get("probes", [])
        if "egress" in answer:
            report = EgressReport.from_json(answer["egress"])
    except NoDaemonError:
        view, counters, report = _local_view(call)
    recent = AuditLog(config.agent.state_dir).recent(10)
    egress = _egress(config)
    if call.args.json:
        document = {
            **view.to_json(),
            "counters": _traffic_json(counters),
            "egress_addresses": [{"interface": i, "address": a} for i, a in egress],
            "egress": report.to_json() if report is not None else None,
            "probes": probes,
            "recent_changes": recent,
        }
        json.dump(document, call.out, indent=2)
        call.out.write("\n")
        return EXIT_OK
    lines = format_status(view, counters, egress, report)
    if config.probes:
        lines += ["", "probes (the daemon's last runs; `repogate probe` runs them now):"]
        lines += [f"  {_probe_line(p)}" for p in probes] or [
            "  not run yet (no daemon, or just started)"
        ]
    lines += ["", "recent changes (audit trail):", *_changes(recent)]
    call.out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _local_view(call: Invocation) -> tuple[LiveView, dict[str, Any], EgressReport | None]:
    """What the kernel and state_dir hold, built the way the daemon builds its view."""
    config = call.config
    backend = call.backend()
    here = local(config, backend, read_only=True)
    collected = collect(config, network=False)
    inputs = Inputs(collected.results, collected.failures)
    notes: list[str] = here.engine.store.notes()
    not_ours = False
    try:
        outcome = here.engine.reconcile(here.generation, inputs, reason="status", dry_run=True)
    except RepogateError as exc:
        notes.append(str(exc))
        not_ours = isinstance(exc, NotOwnedTableError)
        outcome = _offline(config, inputs)
    last_success = last_fetched(here.engine.store)
    counters = backend.read_counters(config.agent.table)
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
        not_ours=not_ours,
        pending={"add": outcome.plan.elements_added, "delete": outcome.plan.elements_deleted},
        config=str(config.path or ""),
        notes=tuple(notes),
    )
    report: EgressReport | None = None
    try:
        from repogate.daemon.netlink import read_egress  # noqa: PLC0415 - pyroute2

        report = read_egress(config, outcome.desired, backend)
    except Exception:  # status must work without pyroute2 or netlink access
        report = None
    return view, {name: [v.packets, v.bytes] for name, v in counters.items()}, report


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


def _probe_line(data: dict[str, Any]) -> str:
    from repogate.probes import ProbeResult  # noqa: PLC0415

    return ProbeResult.from_json(data).line()


def probe(call: Invocation) -> int:
    """Run probes now: through the daemon when one runs (its metrics see the result),
    here otherwise. Exit 0 only when every probe asked for passed."""
    from repogate.probes import ProbeResult, run_probe  # noqa: PLC0415

    config = call.config
    names: list[str] = list(call.args.names)
    known = {p.name: p for p in config.probes}
    unknown = [name for name in names if name not in known]
    if not known or unknown:
        what = f"no probe named {', '.join(unknown)}" if unknown else "no [[probes]] configured"
        print(f"{what} (probes: {', '.join(known) or 'none'})", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = ask(config.agent.table, {"verb": "probe", "names": names}, timeout=120.0)
        if "error" in answer:
            print(answer["error"], file=sys.stderr)
            return EXIT_USAGE
        results = [ProbeResult.from_json(r) for r in answer["probes"]]
    except NoDaemonError:
        results = [run_probe(known[name]) for name in names or known]
    if call.args.json:
        json.dump([r.to_json() for r in results], call.out, indent=2)
        call.out.write("\n")
    else:
        call.out.write("".join(r.line() + "\n" for r in results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE
