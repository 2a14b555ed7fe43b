"""The verbs that touch the table or report on it: sync, status, explain, render, teardown.

When a daemon runs on the table (it holds the table's lock socket), `sync`,
`status` and `explain` ask it instead of working beside it: a second writer
would undo its changes, and only it knows what its sources said. Without a
daemon they run the engine here, and say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from repogate.audit import AuditLog
from repogate.config import Config
from repogate.engine import Engine, Generation, Inputs, Outcome
from repogate.errors import RepogateError
from repogate.instance import Instance
from repogate.nft.backend import Backend, RecordingBackend
from repogate.nft.builders import transaction
from repogate.report import describe, describe_sources
from repogate.runtime import AlreadyRunningError, TableLock, ask
from repogate.sources import collect
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
