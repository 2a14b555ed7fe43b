"""`make demo`: build the lab, let repogate enforce, and show who reached what.

Prints the topology, the output of `repogate sync`, a table of every client x target with
what happened and what should have happened, `repogate status`, and a one-line verdict. Exits
0 when everything is as expected, 1 otherwise (or when a step fails), 130 on Ctrl-C.

The lab is torn down on every path out: normal exit, failure, Ctrl-C, SIGTERM and SIGHUP
(the last two are turned into SystemExit so the `with` block's cleanup runs).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from lab.errors import LabError
from lab.probe import CONNECTED, DEFAULT_TIMEOUT, REFUSED, ProbeResult
from lab.spec import Client, LabSpec, expected_allowed
from lab.topology import Lab


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    result: ProbeResult
    allowed: bool  # what should happen

    @property
    def as_expected(self) -> bool:
        """Allowed means the banner was read; denied means a reset (not a timeout)."""
        if self.allowed:
            return self.result.connected
        return self.result.result == REFUSED


def install_signal_handlers() -> None:
    """Make SIGTERM/SIGHUP unwind like Ctrl-C does, so `finally` and `__exit__` run."""

    def exit_on(signum: int) -> Callable[[int, FrameType | None], None]:
        def handler(_signum: int, _frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        return handler

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, exit_on(signal.SIGTERM))
    signal.signal(signal.SIGHUP, exit_on(signal.SIGHUP))


def build_rows(results: Sequence[ProbeResult], spec: LabSpec, enforcing: bool) -> list[Row]:
    """Pair each result with its expectation (everything is allowed when not enforcing)."""
    by_source: dict[tuple[str, str], Client] = {
        (c.role, a): c for c in spec.vantages() for a in c.addresses()
    }
    rows = []
    for result in results:
        client = by_source[(result.client, result.source)]
        allowed = not enforcing or expected_allowed(client, result.target)
        rows.append(Row(result, allowed))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """The table the demo prints; `ok` or `UNEXPECTED` at the end of each line."""
    columns = ("client", "address", "target", "result", "time", "expected", "")
    table = [columns]
    for row in rows:
        r = row.result
        table.append(
            (
                r.client,
                r.source,
                r.target.label,
                r.result if r.result != CONNECTED or r.connected else f"{r.result} (wrong banner)",
                f"{r.elapsed * 1000:.0f}ms",
                "allowed" if row.allowed else "denied",
                "ok" if row.as_expected else "UNEXPECTED",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def indent(text: str, prefix: str = "  ") -> str:
    """Indent command output under its heading."""
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def run_demo(args: argparse.Namespace) -> int:
    """Build, enforce, probe, report; return the exit code."""
    enforcing = not args.no_repogate
    started = time.monotonic()
    timings: dict[str, float] = {}
    with Lab.create() as lab:
        timings["lab up"] = time.monotonic() - started
        print(lab.describe())
        print()
        if enforcing:
            step = time.monotonic()
            sync = lab.repogate("sync")
            timings["sync"] = time.monotonic() - step
            print(f"$ repogate sync  (exit {sync.returncode})")
            print(indent(sync.stdout + sync.stderr))
            print()
            if sync.returncode != 0:
                print(f"verdict: repogate sync failed with exit {sync.returncode}")
                return 1
            if args.show_ruleset:
                print(indent(lab.nft("list", "table", "inet", lab.table).stdout))
                print()
        else:
            print("(--no-repogate: no enforcement, every client should reach every target)\n")
        step = time.monotonic()
        results = lab.matrix(lab.spec.vantages(), timeout=args.timeout)
        timings["probes"] = time.monotonic() - step
        rows = build_rows(results, lab.spec, enforcing)
        print(format_table(rows))
        print()
        if enforcing:
            status = lab.repogate("status")
            print(f"$ repogate status  (exit {status.returncode})")
            print(indent(status.stdout + status.stderr))
            print()
        unexpected = [row for row in rows if not row.as_expected]
    timings["teardown"] = lab.timings.get("destroy", 0.0)
    timings["total"] = time.monotonic() - started
    print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    if unexpected:
        print(f"verdict: {len(unexpected)} of {len(rows)} results unexpected")
        return 1
    print(f"verdict: all {len(rows)} results as expected")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m lab.demo`."""
    parser = argparse.ArgumentParser(description="repogate network-namespace demo")
    parser.add_argument(
        "--no-repogate", action="store_true", help="build and probe the lab without repogate"
    )
    parser.add_argument("--show-ruleset", action="store_true", help="print repogate's table")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per connection")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every lab command")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    install_signal_handlers()
    try:
        return run_demo(args)
    except LabError as exc:
        print(f"verdict: lab failure: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: lab torn down", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, int) and exc.code > 128:
            print(f"\nstopped by signal {exc.code - 128}: lab torn down", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
