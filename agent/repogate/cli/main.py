"""The command line: parse arguments, call into the package, map errors to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid config.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from repogate import __version__
from repogate.cli import verbs
from repogate.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    Config,
    Inventory,
    config_path,
    load_config,
)
from repogate.errors import ConfigError, RepogateError, SourceError
from repogate.nft.backend import Backend, NftBackend
from repogate.sources import specs

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
        "--adopt",
        action="store_true",
        help="take over a same-named table repogate did not mark as its own (replaces it)",
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
    devices_parser = verbs.add_parser(
        "devices",
        parents=[common],
        help="each device, its addresses, and why it is admitted or not",
    )
    devices_parser.add_argument("--json", action="store_true", help="machine-readable output")
    probe_parser = verbs.add_parser(
        "probe",
        parents=[common],
        help="check the path to Bitbucket now (SSH host key, git over HTTPS); exit 0 if all pass",
    )
    probe_parser.add_argument("names", nargs="*", metavar="NAME", help="probes to run (all)")
    probe_parser.add_argument("--json", action="store_true", help="machine-readable output")
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


def _check_inventories(config: Config) -> list[str]:
    """Local inventories: rows rejected, and randomised MACs (a phone or laptop with
    MAC randomisation shows another MAC on each network, so such a record never matches)."""
    from repogate.sources.devices.inventory import parse_inventory  # noqa: PLC0415
    from repogate.sources.devices.macs import is_randomised  # noqa: PLC0415

    lines: list[str] = []
    for inventory in config.inventories.values():
        lines += _check_secrets(inventory)
        if inventory.path is None:
            continue
        try:
            parsed = parse_inventory(inventory.path.read_bytes())
        except (OSError, SourceError) as exc:
            lines.append(f"warning: inventory {inventory.name}: {exc}")
            continue
        for rejected in parsed.rejected[:5]:
            lines.append(f"warning: inventory {inventory.name}: {rejected}")
        for record in parsed.records:
            for mac in filter(is_randomised, record.macs):
                lines.append(
                    f"warning: inventory {inventory.name}: device {record.device} lists {mac}, "
                    "a locally administered (randomised) MAC: turn randomisation off for "
                    "this network or identify the device another way"
                )
    return lines


def _check_secrets(inventory: Inventory) -> list[str]:
    """An MDM's secret file must exist, and no one but the service should read it."""
    if inventory.mdm is None:
        return []
    key = "token_file" if inventory.mdm.vendor == "fleet" else "client_secret_file"
    path = (
        inventory.mdm.http.token_file if key == "token_file" else inventory.mdm.client_secret_file
    )
    if path is None:
        return []
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return [f"warning: inventory {inventory.name}: {key} {path}: {exc.strerror or exc}"]
    if mode & 0o004:
        return [
            f"warning: inventory {inventory.name}: {key} {path} is readable by everyone "
            f"(chmod 0640 and chgrp repogate)"
        ]
    return []


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
    for line in _check_inventories(config):
        print(line, file=out)
    print(
        f"{config.path}: ok: {len(config.clients)} client groups ({entries} local entries"
        + (f", {remote} network sources" if remote else "")
        + f"), {len(config.destinations)} destinations, {len(config.rules)} rules, "
        f"table inet {config.agent.table}, hooks {', '.join(config.agent.hooks)}",
        file=out,
    )
    return EXIT_OK


def _run(call: Invocation) -> int:
    from repogate.daemon.service import Daemon  # noqa: PLC0415 - APScheduler is the daemon's alone

    path = call.config.path or config_path(getattr(call.args, "config", None))
    code = Daemon(path, backend_factory=call.backend).run()
    # The final state and boot ruleset are written; a refresh worker may still be stuck
    # on a server that never answers, and interpreter shutdown would join it. Leave now.
    logging.shutdown()
    for stream in (call.out, call.err):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _views() -> Any:
    """The reporting verbs' module, imported when one of them runs (start-up time is
    part of every `repogate sync`, which the cold-load benchmark holds to raw nft)."""
    from repogate.cli import views  # noqa: PLC0415

    return views


VERBS: dict[str, Handler] = {
    "check": _check,
    "sync": verbs.sync,
    "render": verbs.render,
    "status": lambda call: _views().status(call),
    "explain": lambda call: _views().explain(call),
    "devices": lambda call: _views().devices(call),
    "probe": lambda call: _views().probe(call),
    "teardown": verbs.teardown,
    "run": _run,
}
