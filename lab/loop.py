"""Connect over and over from a client namespace, recording every attempt, until told to stop.

The probe (`lab.probe`) answers "what happens now"; the loop answers "did anything happen
meanwhile": it runs in the background for a whole test while repogate is started, reloaded,
killed and restarted, so a refusal lasting a few milliseconds cannot slip between two probes.

The program half (`python -m lab.loop --out FILE --stop FILE [options] ADDRESS,PORT ...`,
stdlib only) runs inside a client namespace. Every round it connects to each target in turn
(reading the lab banner like the probe does), appends one JSON line per attempt to `--out` and
flushes it, then sleeps until the next round is due. It stops when the `--stop` file appears
or after `--deadline` seconds, whichever comes first, so a crashed test cannot leave it
running for long. Each line:

    {"mono": 1234.567, "time": 1700000000.1, "address": "198.51.100.10", "port": 22,
     "result": "connected", "banner": "repogate-lab bitbucket 198.51.100.10:22",
     "elapsed": 0.0004}

`mono` is CLOCK_MONOTONIC, which network namespaces share with the host, so attempts can be
lined up with what the test did (signals sent, notifications received) at the time.
`result` is one of the probe's verdicts: connected, refused, timeout, error:X.

The host half starts a loop (`start_loop`), stops it (`RunningLoop.stop`) and reads its
attempts back as `Attempt` values.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lab.errors import LabError
from lab.probe import BANNER_PREFIX, CONNECTED, REFUSED, TIMEOUT
from lab.spec import Target

DEFAULT_INTERVAL = 0.03  # seconds between the starts of two rounds
DEFAULT_TIMEOUT = 1.0  # per connection: connect and banner together
DEFAULT_DEADLINE = 120.0  # a loop nobody stops ends by itself after this long


# -- program half (runs in the client namespace) ---------------------------------------------


def attempt(address: str, port: int, timeout: float, source: str | None) -> dict[str, Any]:
    """Connect once, read the banner, classify the outcome like `lab.probe` does."""
    started = time.monotonic()
    record: dict[str, Any] = {
        "mono": round(started, 6),
        "time": round(time.time(), 6),
        "address": address,
        "port": port,
        "banner": "",
    }
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect((address, port))
        line = _read_line(sock, started + timeout)
        record["banner"] = line.decode(errors="replace").strip()
        record["result"] = CONNECTED if line.startswith(BANNER_PREFIX) else "error:no banner"
    except ConnectionRefusedError:
        record["result"] = REFUSED
    except TimeoutError:
        record["result"] = TIMEOUT
    except OSError as exc:
        record["result"] = "error:" + errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        sock.close()
    record["elapsed"] = round(time.monotonic() - started, 6)
    return record


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data


def run_loop(
    targets: Sequence[tuple[str, int]],
    out: TextIO,
    *,
    stop: Path,
    interval: float,
    timeout: float,
    deadline: float,
    source: str | None,
) -> int:
    """Loop over the targets until `stop` exists or `deadline` seconds passed; return rounds."""
    ends = time.monotonic() + deadline
    rounds = 0
    next_round = time.monotonic()
    while time.monotonic() < ends and not stop.exists():
        for address, port in targets:
            out.write(json.dumps(attempt(address, port, timeout, source)) + "\n")
        out.flush()
        rounds += 1
        next_round += interval
        # After a slow round (a timeout), start the next one at once instead of bursting
        # to catch up: the loop measures continuity, not throughput.
        next_round = max(next_round, time.monotonic())
        time.sleep(max(0.0, next_round - time.monotonic()))
    return rounds


def _parse_target(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(",")
    try:
        return address, int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ADDRESS,PORT, got {text!r}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m lab.loop`."""
    parser = argparse.ArgumentParser(description="connect in a loop, one JSON line per attempt")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines are appended here")
    parser.add_argument("--stop", type=Path, required=True, help="stop once this file exists")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE)
    parser.add_argument("--source", help="local address to connect from")
    parser.add_argument("targets", nargs="+", type=_parse_target, metavar="ADDRESS,PORT")
    args = parser.parse_args(argv)
    with args.out.open("a", encoding="utf-8") as out, contextlib.suppress(KeyboardInterrupt):
        run_loop(
            args.targets,
            out,
            stop=args.stop,
            interval=args.interval,
            timeout=args.timeout,
            deadline=args.deadline,
            source=args.source,
        )
    return 0


# -- host half ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One connection attempt of a loop, labelled with the target it was meant for."""

    client: str
    target: Target
    mono: float  # CLOCK_MONOTONIC when the attempt started
    result: str
    banner: str
    elapsed: float

    @property
    def connected(self) -> bool:
        """True when the banner of exactly this target was read."""
        return self.result == CONNECTED and self.banner == self.target.banner

    def describe(self, since: float = 0.0) -> str:
        """`alice -> bitbucket 198.51.100.10:22 at +1.234s: refused (0 ms)`."""
        return (
            f"{self.client} -> {self.target.label} at +{self.mono - since:.3f}s: "
            f"{self.result} ({self.elapsed * 1000:.0f} ms)"
        )


def summarize(attempts: Sequence[Attempt]) -> str:
    """`1234 attempts: 1234 connected` style counts, for reports and assertion messages."""
    counts = Counter(
        a.result if a.result != CONNECTED or a.connected else "wrong banner" for a in attempts
    )
    detail = ", ".join(f"{n} {result}" for result, n in counts.most_common())
    return f"{len(attempts)} attempts: {detail or 'none'}"


@dataclass
class RunningLoop:
    """A loop subprocess in a client namespace, and where its attempts are written."""

    client: str
    targets: Sequence[Target]
    proc: subprocess.Popen[str]
    out_path: Path
    stop_path: Path
    err_path: Path

    def attempts(self) -> list[Attempt]:
        """Every attempt written so far (a half-written last line is left for later)."""
        by_key = {(t.address, t.port): t for t in self.targets}
        found = []
        try:
            text = self.out_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            raw = json.loads(line)
            found.append(
                Attempt(
                    client=self.client,
                    target=by_key[(str(raw["address"]), int(raw["port"]))],
                    mono=float(raw["mono"]),
                    result=str(raw["result"]),
                    banner=str(raw["banner"]),
                    elapsed=float(raw["elapsed"]),
                )
            )
        return found

    def wait_running(self, timeout: float = 10.0) -> None:
        """Wait until every target has been tried once, so the loop is known to work."""
        deadline = time.monotonic() + timeout
        wanted = {(t.address, t.port) for t in self.targets}
        while time.monotonic() < deadline:
            seen = {(a.target.address, a.target.port) for a in self.attempts()}
            if wanted <= seen:
                return
            if self.proc.poll() is not None:
                raise LabError(f"loop in {self.client} exited early: {self._stderr()}")
            time.sleep(0.02)
        raise LabError(f"loop in {self.client} made no attempt on every target in {timeout:g}s")

    def stop(self, timeout: float = 5.0) -> list[Attempt]:
        """Ask the loop to stop (its stop file), kill it if it does not, return its attempts."""
        self.stop_path.touch()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            raise LabError(
                f"loop in {self.client} ignored its stop file for {timeout:g}s"
            ) from None
        if self.proc.returncode != 0:
            raise LabError(f"loop in {self.client} failed: {self._stderr()}")
        return self.attempts()

    def kill(self) -> None:
        """Stop the loop at once, whatever it is doing (cleanup path)."""
        self.stop_path.touch()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _stderr(self) -> str:
        try:
            return self.err_path.read_text().strip() or f"exit {self.proc.returncode}"
        except FileNotFoundError:
            return f"exit {self.proc.returncode}"


def start_loop(
    argv_prefix: Sequence[str],
    client: str,
    targets: Sequence[Target],
    *,
    workdir: Path,
    env: Mapping[str, str],
    interval: float = DEFAULT_INTERVAL,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    source: str | None = None,
) -> RunningLoop:
    """Start `argv_prefix -m lab.loop ...` (argv_prefix runs python in the client namespace).

    Its files go to a fresh directory under `workdir`, so several loops never share one.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"loop-{client}-", dir=workdir))
    out_path, stop_path, err_path = (directory / n for n in ("attempts.jsonl", "stop", "stderr"))
    argv = [*argv_prefix, "-m", "lab.loop", f"--out={out_path}", f"--stop={stop_path}"]
    argv += [f"--interval={interval}", f"--timeout={timeout}", f"--deadline={deadline}"]
    if source is not None:
        argv.append(f"--source={source}")
    argv += [f"{t.address},{t.port}" for t in targets]
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env),
            start_new_session=True,
        )
    return RunningLoop(client, targets, proc, out_path, stop_path, err_path)


if __name__ == "__main__":
    sys.exit(main())
