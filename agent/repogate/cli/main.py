"""The command line: parse arguments, call into the package, map errors to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from repogate import __version__
from repogate.addresses import contains
from repogate.audit import AuditLog
from repogate.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, config_path, load_config
from repogate.errors import ConfigError, RepogateError, SourceError
from repogate.model import DesiredState, Plan
from repogate.nft.backend import Backend, NftBackend
from repogate.nft.builders import build_delete_table, transaction
from repogate.reconcile import check_owned, describe, describe_sources, gather, sync
from repogate.sources import specs
from repogate.state import StateStore

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

BackendFactory = Callable[[], Backend]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `repogate --config X sync` and `repogate sync --config X` both work,
    # without the verb's parser resetting a value given before it.
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})",
    )
    parser = argparse.ArgumentParser(
        prog="repogate",
        description="Only approved clients reach Bitbucket: nftables allowlists kept in sync.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"repogate {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("check", parents=[common], help="validate the config")
    sync_parser = verbs.add_parser(
        "sync", parents=[common], help="apply the config to nftables in one transaction"
    )
    sync_parser.add_argument(
        "--dry-run", action="store_true", help="print the plan, change nothing"
    )
    sync_parser.add_argument(
        "--accept-shrink",
        action="store_true",
        help="apply lists that shrank by more than max_shrink (held back otherwise)",
    )
    sync_parser.add_argument(
        "--show-transaction",
        action="store_true",
        help="also print the libnftables JSON transaction",
    )
    verbs.add_parser("render", parents=[common], help="print the owned table in nft syntax")
    status_parser = verbs.add_parser("status", parents=[common], help="show what is enforced")
    status_parser.add_argument("--json", action="store_true", help="machine-readable output")
    explain_parser = verbs.add_parser(
        "explain", parents=[common], help="may this client reach the destinations, and why"
    )
    explain_parser.add_argument("address", metavar="ADDRESS")
    verbs.add_parser("teardown", parents=[common], help="delete the owned table, nothing else")
    verbs.add_parser(
        "run", parents=[common], help="run as a daemon: keep the table right (systemd notify)"
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    backend_factory: BackendFactory = NftBackend,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        config = load_config(config_path(getattr(args, "config", None)))
        handler = VERBS[args.verb]
        return handler(Invocation(args, config, backend_factory, out, err))
    except ConfigError as exc:
        print(f"repogate: invalid config, nothing was changed:\n{exc}", file=err)
        return EXIT_USAGE
    except RepogateError as exc:
        print(f"repogate: {exc}", file=err)
        return EXIT_FAILURE
    except BrokenPipeError:  # `repogate render | head`
        err.close()
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("repogate: interrupted", file=err)
        return EXIT_FAILURE


@dataclass(frozen=True)
class Invocation:
    """What a verb needs: parsed arguments, the checked config, a backend, and streams."""

    args: argparse.Namespace
    config: Config
    backend: BackendFactory
    out: TextIO
    err: TextIO


Handler = Callable[[Invocation], int]


def _check(call: Invocation) -> int:
    """Validate the config and read local lists; never wait for the network (it runs as
    ExecStartPre, possibly before the network is up)."""
    config, out = call.config, call.out
    entries = 0
    remote = 0
    for spec in specs(config):
        if spec.kind not in ("static", "file"):
            remote += 1
            continue
        try:
            result = spec.make().fetch()
        except SourceError as exc:
            print(f"warning: {spec.label}: {exc}", file=out)
            continue
        entries += len(result.entries)
        if result.rejected_count:
            sample = "; ".join(str(r) for r in result.rejected_sample[:3])
            print(f"{spec.label}: {result.rejected_count} entries rejected ({sample})", file=out)
    print(
        f"{config.path}: ok: {len(config.clients)} client groups ({entries} local entries"
        + (f", {remote} network sources" if remote else "")
        + f"), {len(config.destinations)} destinations, {len(config.rules)} rules, "
        f"table inet {config.agent.table}, hooks {', '.join(config.agent.hooks)}",
        file=out,
    )
    return EXIT_OK


def _sync(call: Invocation) -> int:
    args, config, out = call.args, call.config, call.out
    store = StateStore(config.agent.state_dir)
    store.load()
    audit = AuditLog(config.agent.state_dir, config.audit.path)
    prepared: list[tuple[list[dict[str, Any]], str]] = []
    warnings: list[str] = []

    def save_state() -> None:
        try:
            store.save_if_due(time.time())
        except OSError as exc:
            warnings.append(
                f"repogate: warning: could not save last known good entries in "
                f"{config.agent.state_dir}: {exc.strerror or exc}"
            )

    def meanwhile(plan: Plan, desired: DesiredState) -> None:
        lines = audit.prepare(plan, desired, "sync")
        prepared.append((lines, audit.serialise(lines)))
        save_state()

    result = sync(
        config,
        call.backend(),
        dry_run=args.dry_run,
        store=store,
        accept_shrink=args.accept_shrink,
        meanwhile=meanwhile,
    )
    if result.applied and prepared:
        audit.write(*prepared[0])
    elif not args.dry_run:
        save_state()  # nothing applied: the sources' records may still be due a save
    for warning in warnings:
        print(warning, file=call.err)
    gathered = result.gathered
    for line in describe_sources(config, gathered.collected, gathered.stale, gathered.held):
        print(line, file=out)
    prefix = "would " if args.dry_run and not result.plan.is_empty else ""
    for line in describe(result.plan, config.agent.table):
        print(f"{prefix}{line}", file=out)
    if args.show_transaction and result.commands:
        print(json.dumps(transaction(result.commands), indent=1), file=out)
    if result.applied:
        print(
            f"applied in one transaction: +{result.plan.elements_added} "
            f"-{result.plan.elements_deleted} elements in {result.seconds * 1000:.1f} ms",
            file=out,
        )
    if result.failures:
        print(
            f"repogate: {len(result.failures)} source(s) failed; they keep their last "
            "known good entries",
            file=call.err,
        )
        return EXIT_FAILURE
    if gathered.held:
        print(
            f"repogate: {len(gathered.held)} source(s) held back for shrinking; "
            "check them, then `repogate sync --accept-shrink`",
            file=call.err,
        )
        return EXIT_FAILURE
    return EXIT_OK


# Verbs other than check and sync import their modules when used: start-up time is
# part of every `repogate sync`, which the cold-load benchmark holds to raw nft speed.


def _render(call: Invocation) -> int:
    config, out = call.config, call.out
    from repogate.nft.render import render  # noqa: PLC0415 - see above

    store = StateStore(config.agent.state_dir)
    store.load()
    out.write(render(gather(config, None, store, network=False).desired))
    return EXIT_OK


def _status(call: Invocation) -> int:
    args, config, out = call.args, call.config, call.out
    from repogate.cli.status import collect_status, format_status  # noqa: PLC0415

    current = call.backend().read_table(config.agent.table)
    store = StateStore(config.agent.state_dir)
    store.load()  # read only: status never writes state
    gathered = gather(config, current, store, network=False)
    status = collect_status(config, gathered, _egress(config))
    recent = AuditLog(config.agent.state_dir).recent(10)
    if args.json:
        json.dump({**status.to_json(), "recent_changes": recent}, out, indent=2)
        out.write("\n")
    else:
        out.write("\n".join(format_status(status)) + "\n")
        out.write("\n".join(["", "recent changes (audit trail):", *_changes(recent)]) + "\n")
    return EXIT_OK


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


def _explain(call: Invocation) -> int:
    args, config, out = call.args, call.config, call.out
    from repogate.cli.explain import explain, format_explanation  # noqa: PLC0415

    try:
        current = call.backend().read_table(config.agent.table)
    except RepogateError:
        current = None  # explain still answers from the config without nftables access
    store = StateStore(config.agent.state_dir)
    store.load()
    desired = gather(config, current, store, network=False).desired
    try:
        explanation = explain(config, desired, current, args.address)
    except ValueError:
        print(f"repogate: {args.address!r} is not an IP address", file=call.err)
        return EXIT_USAGE
    lines = format_explanation(explanation)
    trail = AuditLog(config.agent.state_dir).trail(explanation.address)
    lines += ["", f"audit trail of {explanation.address}:"]
    address = ipaddress.ip_address(explanation.address)
    for line in trail[-20:]:
        admitted = any(contains(entry, address) for entry in line.get("added", []))
        verb = "admitted" if admitted else "removed"
        lines.append(
            f"  {line['time']}  {verb} via {line['set']} ({line['owner']}, {line['reason']})"
        )
    if not trail:
        lines.append("  no recorded change touches it")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _teardown(call: Invocation) -> int:
    config, out = call.config, call.out
    backend = call.backend()
    current = backend.read_table(config.agent.table)
    if current is None:
        print(f"table inet {config.agent.table}: not present, nothing to do", file=out)
        return EXIT_OK
    check_owned(current)
    backend.apply(build_delete_table(config.agent.table))
    AuditLog(config.agent.state_dir, config.audit.path).record_event(
        config.agent.table, "table deleted", "teardown"
    )
    print(f"table inet {config.agent.table}: deleted", file=out)
    return EXIT_OK


def _run(call: Invocation) -> int:
    from repogate.daemon.service import Daemon  # noqa: PLC0415 - APScheduler is the daemon's alone

    path = call.config.path or config_path(getattr(call.args, "config", None))
    return Daemon(path, backend_factory=call.backend).run()


VERBS: dict[str, Handler] = {
    "check": _check,
    "sync": _sync,
    "render": _render,
    "status": _status,
    "explain": _explain,
    "teardown": _teardown,
    "run": _run,
}
