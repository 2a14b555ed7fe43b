"""The proof's output: one line per check, facts and timings, and the failure count.

A check's verdict is an exception (Failed) so that a check body reads as the
straight path with its evidence returned; anything else raised in a check is a
FAIL too, never a traceback that would hide the checks after it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


class Failed(Exception):  # noqa: N818 - a verdict, not an error
    """A check's verdict: FAIL, with the evidence as the message."""


class Report:
    """One line per check, facts and timings; counts the failures."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.failures = 0
        self.passed = 0

    def line(self, tag: str, text: str) -> None:
        print(f"{tag:<5} {text}", flush=True)

    def info(self, text: str) -> None:
        self.line("info", text)

    def timing(self, what: str, seconds: float) -> None:
        self.line("time", f"{what}: {seconds:.1f}s")

    def check(self, what: str, body: Callable[[], str | None]) -> bool:
        """Run one check; its return value is shown as evidence, Failed is a FAIL."""
        began = time.monotonic()
        try:
            evidence = body()
            ok = True
        except Failed as failure:
            evidence, ok = str(failure), False
        except subprocess.TimeoutExpired as timeout:
            evidence, ok = f"timed out after {timeout.timeout}s: {argv_text(timeout.cmd)}", False
        except Exception as error:  # a broken step is a failed check, not a traceback
            evidence, ok = f"{type(error).__name__}: {error}", False
        seconds = time.monotonic() - began
        suffix = f": {evidence}" if evidence else ""
        self.line("ok" if ok else "FAIL", f"{what}{suffix} [{seconds:.1f}s]")
        if ok:
            self.passed += 1
        else:
            self.failures += 1
        return ok

    def not_run(self, what: str, why: str) -> None:
        self.failures += 1
        self.line("FAIL", f"{what}: not run ({why})")


def argv_text(argv: object) -> str:
    if isinstance(argv, (list, tuple)):
        return " ".join(str(a) for a in argv)
    return str(argv)


def first_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:count]) if lines else "(no output)"
