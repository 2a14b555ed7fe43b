"""What the daemon answers on its control socket: status, sync and explain.

`sync` runs the same reconcile as every refresh, after fetching every source
now, so `repogate sync --accept-shrink` during a hold does what it says while a
daemon runs instead of racing it.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING, Any

from repogate.devices import device_lines_for, device_rows
from repogate.explain import explain, format_explanation
from repogate.report import describe, describe_sources
from repogate.sources.devices.join import ADMITTED
from repogate.sources.devices.source import DeviceSource

if TYPE_CHECKING:
    from repogate.daemon.service import Daemon


class RequestHandler:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0911 - one per verb
        verb = request.get("verb")
        if verb == "status":
            return self.status()
        if verb == "sync":
            return self.sync(
                dry_run=bool(request.get("dry_run")),
                accept_shrink=bool(request.get("accept_shrink")),
                adopt=bool(request.get("adopt")),
            )
        if verb == "explain":
            return self.explain(str(request.get("address", "")))
        if verb == "probe":
            names = [str(name) for name in request.get("names", [])]
            unknown = sorted(set(names) - {probe.name for probe in self.daemon.config.probes})
            if unknown:
                return {"error": f"no probe named {', '.join(unknown)}"}
            return {"probes": [r.to_json() for r in self.daemon.probes.run_now(names)]}
        if verb == "devices":
            return {"devices": [row.to_json() for row in device_rows(self.device_sources())]}
        return {"error": f"unknown request {verb!r}"}

    def status(self) -> dict[str, Any]:
        live = self.daemon.publisher.live
        if live is None:
            return {"error": "the daemon is starting"}
        counters: dict[str, Any] = {}
        try:
            read = self.daemon.engine.backend.read_counters(live.table)
            counters = {name: [value.packets, value.bytes] for name, value in read.items()}
        except Exception as exc:  # status must answer even when nftables cannot be read
            counters = {"error": str(exc)}
        # State-file notes are read here, when asked, not at every reconcile.
        notes = tuple(self.daemon.engine.store.notes())
        answer: dict[str, Any] = {
            "status": dataclasses.replace(live, notes=notes).to_json(),
            "counters": counters,
        }
        answer["probes"] = [r.to_json() for r in self.daemon.probes.results.values()]
        try:  # fresh, from the routes and NAT rules as they are now
            answer["egress"] = self.daemon.egress.fresh().to_json()
        except Exception as exc:  # status must answer even when netlink cannot be read
            answer["egress_error"] = str(exc)
        return answer

    def sync(self, *, dry_run: bool, accept_shrink: bool, adopt: bool) -> dict[str, Any]:
        daemon = self.daemon
        for key in daemon.sources.source_keys():
            daemon.sources.fetch(key, force=True)
        generation = daemon.generation
        outcome = daemon.reconcile(
            {"sync"}, verify=True, dry_run=dry_run, accept_shrink=accept_shrink, adopt=adopt
        )
        if outcome is None:
            return {"error": f"reconcile failed: {daemon.publisher.last_error}"}
        inputs = daemon.sources.snapshot(generation)
        lines = describe_sources(generation, inputs, outcome)
        prefix = "would " if dry_run and not outcome.plan.is_empty else ""
        lines += [f"{prefix}{line}" for line in describe(outcome.plan, generation.table)]
        return {
            "lines": lines,
            "applied": outcome.applied,
            "seconds": outcome.seconds,
            "added": outcome.plan.elements_added,
            "deleted": outcome.plan.elements_deleted,
            "failures": len(inputs.failures),
            "held": len(outcome.held),
        }

    def device_sources(self) -> dict[str, DeviceSource]:
        return self.daemon.sources.device_sources()

    def why(self, address: str) -> str:
        """The why page for the device at `address`: its own verdict, nothing else."""
        lines = [f"repogate on {socket.gethostname()}: the gate to Bitbucket", ""]
        lines.append(f"Your address: {address}")
        rows = [r for r in device_rows(self.device_sources()) if address in r.addresses]
        for row in rows:
            who = row.device or "a device repogate does not know"
            owner = f" ({row.owner})" if row.owner else ""
            verdict = "ADMITTED" if row.state == ADMITTED else f"REFUSED ({row.state})"
            lines += [
                "",
                f"Device: {who}{owner}, seen as {row.identity} (group {row.group})",
                f"Verdict: {verdict}",
                f"Reason: {row.reason}",
            ]
        desired = self.daemon.engine.last_applied
        if desired is not None:
            found = explain(self.daemon.config, desired, self.daemon.engine.model, address)
            lines.append("")
            for reach in found.reaches:
                groups = sorted({m.group for m in reach.via})
                if reach.allowed_ports:
                    ports = ", ".join(map(str, reach.allowed_ports))
                    lines.append(
                        f"{reach.destination}: allowed on TCP {ports} (group {', '.join(groups)})"
                    )
                else:
                    lines.append(f"{reach.destination}: refused")
            if not rows and not found.memberships:
                lines.append(
                    "No client group lists this address and no device group sees a device at it."
                )
        lines += ["", "Ask your admin with this page if the reason is not what you expect."]
        return "\n".join(lines) + "\n"

    def explain(self, address: str) -> dict[str, Any]:
        engine = self.daemon.engine
        desired = engine.last_applied
        if desired is None:
            return {"error": "the daemon has not applied anything yet"}
        try:
            found = explain(self.daemon.config, desired, engine.model, address)
        except ValueError:
            return {"error": f"{address!r} is not an IP address"}
        live = self.daemon.publisher.live
        held = sorted(live.sources if live else (), key=lambda s: s.key)
        lines = device_lines_for(found.address, self.device_sources())
        lines += format_explanation(
            found, held_sources=[s.key for s in held if s.state == "held back"], daemon=True
        )
        return {"address": found.address, "lines": lines}
