"""Prove a built repogate .deb on a booted Debian 12 (bookworm), systemd as PID 1.

The run from start to end: arguments, root, the host's tools, the cached base,
a per-run root, boot, the checks, shutdown, and the verdict with the exit
status. SIGTERM unwinds like Ctrl-C so the container and namespace are cleaned
up whichever way a run ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .base import ensure_base, prepare_root
from .container import Container, network_namespace, run_directory
from .host import require_host_tools
from .package import PACKAGE
from .report import Failed, Report, first_lines
from .steps import Proof

REPO = Path(__file__).resolve().parents[2]


def default_deb() -> Path | None:
    debs = sorted((REPO / "dist").glob(f"{PACKAGE}_*_all.deb"), key=lambda p: p.stat().st_mtime)
    return debs[-1] if debs else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("deb", nargs="?", type=Path, help="default: newest dist/repogate_*_all.deb")
    parser.add_argument("--keep", action="store_true", help="keep the run's root for inspection")
    args = parser.parse_args(argv)
    args.deb = args.deb or default_deb()
    if args.deb is None or not args.deb.is_file():
        parser.error(
            f"no .deb: {args.deb or 'dist/repogate_*_all.deb'} (build one with `make deb`)"
        )
    args.deb = args.deb.resolve()
    return args


def terminate_as_exit(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the container and netns are cleaned up."""
    raise SystemExit(128 + signum)


def prove(args: argparse.Namespace, report: Report) -> None:
    began = time.monotonic()
    base = ensure_base(report)
    with run_directory(args.keep) as workdir, network_namespace() as netns:
        step = time.monotonic()
        downloaded = prepare_root(base, workdir / "root", args.deb)
        report.timing(
            f"per-run root copy and dependency download ({downloaded} .debs fetched)",
            time.monotonic() - step,
        )
        container = Container(workdir / "root", netns, workdir / "console.log")
        try:
            step = time.monotonic()
            booted = report.check(
                "boot bookworm with systemd as PID 1 (nspawn)",
                lambda: f"is-system-running: {container.boot()}",
            )
            report.timing("boot", time.monotonic() - step)
            if booted:
                failed = container.run("systemctl", "--failed", "--plain", "--no-legend").stdout
                if failed.strip():
                    report.info(f"failed units at boot: {first_lines(failed, 5)}")
                Proof(container, report, args.deb, workdir).run_all()
        finally:
            step = time.monotonic()
            container.stop()
            report.timing("container shutdown", time.monotonic() - step)
    report.timing("total", time.monotonic() - began)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("packaging/proof/run needs root (debootstrap, namespaces, nspawn)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, terminate_as_exit)
    report = Report()
    report.info(f"proving {args.deb}")
    try:
        require_host_tools()
        prove(args, report)
    except Failed as failure:  # setup failed: nothing could be checked
        report.line("FAIL", f"setup: {failure}")
        report.failures += 1
    except (KeyboardInterrupt, SystemExit) as stop:  # cleaned up on the way out
        report.line("FAIL", f"interrupted after {time.monotonic() - report.started:.1f}s")
        return stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
    verdict = "all checks passed" if report.failures == 0 else f"{report.failures} FAILED"
    report.line(
        "ok" if report.failures == 0 else "FAIL", f"{report.passed} checks passed, {verdict}"
    )
    return 0 if report.failures == 0 else 1
