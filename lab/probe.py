"""Make real TCP connections from a client namespace and classify what happened.

The program half (`python -m lab.probe --timeout 1.5 ADDRESS,PORT ...`, stdlib only) runs
inside a client namespace, tries every target concurrently and prints one JSON list:

    connected   the lab banner was read: the SYN got through and the server answered
    refused     ECONNREFUSED: a TCP reset, which is how repogate turns clients away
    timeout     nothing came back within the timeout (a silent drop, or a broken lab)
    error:X     anything else, X being the errno name (e.g. error:EHOSTUNREACH) or a reason

`elapsed` is reported too, because "refused" is only the right answer when it is fast: a reset
that took the whole timeout would mean something other than repogate answered.
The host half starts one probe per client and turns its JSON into ProbeResult values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lab.errors import LabError
from lab.spec import Target

BANNER_PREFIX = b"repogate-lab "
DEFAULT_TIMEOUT = 1.5

CONNECTED = "connected"
REFUSED = "refused"
TIMEOUT = "timeout"


async def _probe_one(address: str, port: int, timeout: float, source: str | None) -> dict[str, Any]:
    started = time.monotonic()
    outcome: dict[str, Any] = {"address": address, "port": port, "banner": ""}
    local = (source, 0) if source else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, local_addr=local), timeout
        )
    except ConnectionRefusedError:
        outcome["result"] = REFUSED
    except TimeoutError:
        outcome["result"] = TIMEOUT
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc))
        outcome["result"] = f"error:{name}"
    else:
        remaining = max(0.1, timeout - (time.monotonic() - started))
        try:
            line = await asyncio.wait_for(reader.readline(), remaining)
        except TimeoutError:
            outcome["result"] = "error:no banner"
        except OSError as exc:
            outcome["result"] = f"error:{errno.errorcode.get(exc.errno or 0, str(exc))}"
        else:
            outcome["banner"] = line.decode(errors="replace").strip()
            good = line.startswith(BANNER_PREFIX)
            outcome["result"] = CONNECTED if good else "error:no banner"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    outcome["elapsed"] = round(time.monotonic() - started, 4)
    return outcome


async def probe_all(
    targets: Sequence[tuple[str, int]], timeout: float, source: str | None
) -> list[dict[str, Any]]:
    """Probe every (address, port) at once; results come back in the same order."""
    return list(await asyncio.gather(*(_probe_one(a, p, timeout, source) for a, p in targets)))


def _parse_target(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(",")
    try:
        return address, int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ADDRESS,PORT, got {text!r}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m lab.probe`."""
    parser = argparse.ArgumentParser(description="probe TCP targets, print JSON results")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--source", help="local address to connect from")
    parser.add_argument("targets", nargs="+", type=_parse_target, metavar="ADDRESS,PORT")
    args = parser.parse_args(argv)
    results = asyncio.run(probe_all(args.targets, args.timeout, args.source))
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


@dataclass(frozen=True)
class ProbeResult:
    """What one client saw when connecting to one target."""

    client: str
    source: str  # the address the client connected from
    target: Target
    result: str
    banner: str
    elapsed: float  # seconds from connect() to the verdict

    @property
    def connected(self) -> bool:
        """True when the banner of exactly this target was read."""
        return self.result == CONNECTED and self.banner == self.target.banner


def format_results(results: Sequence[ProbeResult]) -> str:
    """One `client source -> target: result (time)` line per result, for assertion messages."""
    lines = []
    for r in results:
        line = f"{r.client} {r.source} -> {r.target.label}: {r.result} ({r.elapsed * 1000:.0f} ms)"
        if r.banner and not r.connected:
            line += f" banner {r.banner!r}"
        lines.append(line)
    return "\n".join(lines)


@dataclass
class RunningProbe:
    """A probe subprocess in flight, and what it needs to label its results."""

    client: str
    sources: Mapping[int, str]  # IP version -> source address shown in results
    targets: Sequence[Target]
    proc: subprocess.Popen[str]
    deadline: float

    def collect(self) -> list[ProbeResult]:
        """Wait for the probe and parse its JSON, raising LabError if it went wrong."""
        try:
            out, err = self.proc.communicate(timeout=self.deadline)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.communicate()
            raise LabError(f"probe from {self.client} hung for {self.deadline:g}s") from exc
        if self.proc.returncode != 0:
            raise LabError(f"probe from {self.client} failed: {err.strip() or out.strip()}")
        try:
            raw: list[dict[str, Any]] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise LabError(f"probe from {self.client} printed no JSON: {out!r} {err!r}") from exc
        return [
            ProbeResult(
                client=self.client,
                source=self.sources.get(target.version, "?"),
                target=target,
                result=str(item["result"]),
                banner=str(item["banner"]),
                elapsed=float(item["elapsed"]),
            )
            for target, item in zip(self.targets, raw, strict=True)
        ]


def start_probe(
    argv_prefix: Sequence[str],
    client: str,
    sources: Mapping[int, str],
    targets: Sequence[Target],
    *,
    env: Mapping[str, str],
    timeout: float = DEFAULT_TIMEOUT,
    source: str | None = None,
) -> RunningProbe:
    """Start `argv_prefix -m lab.probe ...` (argv_prefix runs python in the client namespace)."""
    argv = [*argv_prefix, "-m", "lab.probe", f"--timeout={timeout}"]
    if source is not None:
        argv.append(f"--source={source}")
    argv += [f"{t.address},{t.port}" for t in targets]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=dict(env),
    )
    # Every connection runs concurrently, so the whole probe takes about one timeout; the
    # slack covers interpreter start-up on a loaded machine.
    return RunningProbe(client, sources, targets, proc, deadline=timeout * 2 + 15)


if __name__ == "__main__":
    sys.exit(main())
