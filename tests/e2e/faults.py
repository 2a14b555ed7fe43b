"""The fault suite's instrument: continuity loops around a fault, and one result per fault.

While a fault is injected into the real daemon in the lab, an approved client (alice)
and an unapproved one (mallory) connect to Bitbucket every 50 ms over IPv4 and IPv6
(lab.loop). A *wrong-state moment* is an attempt with the wrong outcome: alice
refused, or mallory admitted (or not reset fast). Each fault declares the repair
window its docs promise (0 for most: the gate must never be wrong; a ruleset flush
by someone else is repaired within it). A result records the wrong moments, whether
they all fell inside that window, whether the daemon survived, whether `status`
told the truth, how long it took to converge after the fault cleared, and how long
SIGTERM then took.

Results are appended as JSON lines to $REPOGATE_FAULT_RESULTS (default
build/faults.jsonl); `python3 tests/e2e/faults.py build/faults.jsonl` prints the
table docs/reliability.md carries.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # run as a script (the table), the lab is not importable
    from lab.loop import Attempt

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(os.environ.get("REPOGATE_FAULT_RESULTS", REPO / "build" / "faults.jsonl"))
FAST_RESET = 0.5
TARGETS = [("bitbucket", 22)]  # over IPv4 and IPv6: alice and mallory have both


@dataclass
class FaultResult:
    fault: str
    category: str
    attempts: int = 0
    wrong: int = 0  # wrong-state moments
    wrong_outside_window: int = 0
    window: float = 0.0  # the documented repair window, seconds
    alive: bool = True
    status_ok: bool = True
    converge: float | None = None  # seconds from clearing the fault to right again
    stop: float | None = None  # seconds SIGTERM took afterwards
    notes: list[str] = field(default_factory=list)


class FaultRun:
    """Loops started before the fault; `inject` and `clear` mark the timeline."""

    def __init__(
        self,
        name: str,
        category: str,
        start_loop: Callable[..., Any],
        window: float = 0.0,
        *,
        clients: tuple[str, str] = ("alice", "mallory"),
    ) -> None:
        """`clients`: the approved and the unapproved loop's client, as `start_loop` knows
        them (a device's own namespace or tunnel address for the device faults)."""
        self.result = FaultResult(name, category, window=window)
        self.alice = start_loop(clients[0], TARGETS, interval=0.05)
        self.mallory = start_loop(clients[1], TARGETS, interval=0.05)
        self.alice.wait_running()
        self.mallory.wait_running()
        self.injected: float | None = None
        self.cleared: float | None = None
        # What makes an attempt wrong. A fault that takes access away on purpose (a lease
        # expiring) replaces these with its documented expectation and bound.
        self.approved_wrong: Callable[[Attempt], bool] = lambda a: not a.connected
        self.unapproved_wrong: Callable[[Attempt], bool] = lambda a: (
            a.result != "refused" or a.elapsed >= FAST_RESET
        )

    def inject(self) -> None:
        self.injected = time.monotonic()

    def clear(self) -> None:
        self.cleared = time.monotonic()

    def finish(self, daemon: Any, *, settle: float = 0.5, stop: bool = True) -> FaultResult:
        """Stop the loops, judge every attempt, stop the daemon (`check` records)."""
        time.sleep(settle)
        alice, mallory = self.alice.stop(), self.mallory.stop()
        wrong = [a for a in alice if self.approved_wrong(a)]
        wrong += [a for a in mallory if self.unapproved_wrong(a)]
        result = self.result
        result.attempts = len(alice) + len(mallory)
        result.wrong = len(wrong)
        start = self.injected if self.injected is not None else float("inf")
        result.wrong_outside_window = sum(
            1 for a in wrong if not start <= a.mono <= start + result.window
        )
        result.alive = daemon is None or daemon.proc.poll() is None
        if self.cleared is not None:
            late = [a.mono for a in wrong if a.mono >= self.cleared]
            result.converge = round(max(late) - self.cleared, 3) if late else 0.0
        if stop and daemon is not None and daemon.proc.poll() is None:
            sent = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.wait(timeout=30)
            result.stop = round(time.monotonic() - sent, 3)
        return result

    def check(self, result: FaultResult, context: str = "") -> None:
        """Record the result (the test has filled in status_ok and notes), then the
        verdict every fault shares."""
        record(result)
        assert result.attempts > 20, f"{result}\n{context}"
        assert result.wrong_outside_window == 0, f"{result}\n{context}"
        assert result.alive, f"{result}\n{context}"
        assert result.status_ok, f"{result}\n{context}"
        assert result.stop is None or result.stop < 5.0, f"{result}\n{context}"


def record(result: FaultResult) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(asdict(result)) + "\n")


def table(path: Path) -> str:
    """The markdown table of the newest result of each fault."""
    newest: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        data = json.loads(line)
        newest[data["fault"]] = data
    lines = [
        "| category | fault | attempts | wrong-state moments | all in repair window | "
        "daemon alive | status true | converge (s) | SIGTERM (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for data in sorted(newest.values(), key=lambda d: (d["category"], d["fault"])):
        window = f"yes ({data['window']:g} s)" if data["wrong"] else "none needed"
        if data["wrong_outside_window"]:
            window = f"NO: {data['wrong_outside_window']} outside"
        lines.append(
            f"| {data['category']} | {data['fault']} | {data['attempts']} | {data['wrong']} | "
            f"{window} | {'yes' if data['alive'] else 'NO'} | "
            f"{'yes' if data['status_ok'] else 'NO'} | {_num(data['converge'])} | "
            f"{_num(data['stop'])} |"
        )
    notes = [
        f"- {data['fault']}: {note}"
        for data in sorted(newest.values(), key=lambda d: (d["category"], d["fault"]))
        for note in data.get("notes", [])
    ]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1] if len(sys.argv) > 1 else RESULTS)))
