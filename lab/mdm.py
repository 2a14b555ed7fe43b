"""HTTPS stand-ins for three MDM vendors' APIs (Intune via Graph, Jamf Pro, Fleet), for tests.

One server answers all three under path prefixes (`/login` and `/graph` for Intune, `/jamf`,
`/fleet`) on one port, with a certificate from a throwaway CA (`LabCA`) written to the
stand-in's directory. It serves `state.json` there, read again on every request, so a test or
another process changes devices, credentials, page sizes and faults by rewriting it
(`write_state`: atomic, no request sees half a file). Faults are counted in memory by id, so a
rewrite does not re-arm a used-up one. Every request is logged, in memory and in
`requests.jsonl`, without secrets, tokens or form bodies.

In-process: `with mdm_standin(directory) as standin:`. In a network namespace:
`start_mdm_standin(netns, directory, host)` runs `python -m lab.mdm --dir D --host ADDR`, which
prints one JSON line once listening and serves until SIGTERM. As in lab.https, TLS handshakes
run in the connection's thread and stopping never waits on a delay or an idle connection.
The vendors' shapes are in lab.mdm_vendors.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lab import mdm_vendors as vendors
from lab.errors import LabError
from lab.https import LOOPBACK, SERVER_NAMES, LabCA, TrackedServer
from lab.netns import in_netns
from lab.server import ServerProcess

STATE = "state.json"
REQUESTS = "requests.jsonl"
FAULT_KINDS = ("status", "rate_limit", "truncate", "not_found", "reset", "delay", "expire_tokens")
SECRET_KEYS = {"client_secret", "access_token", "token", "password"}  # query values not logged
FAULTS = {(vendor, kind) for vendor in vendors.VENDORS for kind in FAULT_KINDS}
REPO = Path(__file__).resolve().parents[1]


def write_state(directory: Path, state: Mapping[str, Any]) -> None:
    """Replace `state.json` atomically (a temporary file, then a rename), its faults checked."""
    for fault in state.get("faults") or []:
        if not fault.get("id") or (fault.get("vendor"), fault.get("kind")) not in FAULTS:
            raise LabError(f"fault {fault!r}: needs an id, a vendor and a kind {FAULT_KINDS}")
    temporary = directory / f".state-{secrets.token_hex(4)}.json"
    temporary.write_text(json.dumps(state, indent=1))
    os.replace(temporary, directory / STATE)


@dataclass(frozen=True)
class MdmRequest:
    """One request as recorded: never a secret, a token or a form body."""

    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    vendor: str | None
    authorization: bool  # whether an Authorization header was sent, not what it said
    status: int | None  # None: reset unanswered
    fault: str | None  # the id of the fault that answered (or truncated) it
    # CLOCK_MONOTONIC when it was answered: shared by every namespace, so a test lines
    # requests up with its own timeline (a Retry-After honoured); 0.0 in older logs.
    mono: float = 0.0


class _Urls:
    """Where each vendor's client points, and the state and log beside the CA certificate."""

    base: str
    ca_file: Path
    directory: Path

    @property
    def intune_authority(self) -> str:
        return f"{self.base}/login"

    @property
    def graph(self) -> str:
        return f"{self.base}/graph"

    @property
    def jamf_url(self) -> str:
        return f"{self.base}/jamf"

    @property
    def fleet_url(self) -> str:
        return f"{self.base}/fleet"

    def write_state(self, state: Mapping[str, Any]) -> None:
        write_state(self.directory, state)

    def requests(self, vendor: str | None = None) -> list[MdmRequest]:
        """The requests logged in requests.jsonl (by this process or another)."""
        path = self.directory / REQUESTS
        lines = path.read_text().splitlines() if path.exists() else []
        seen = [MdmRequest(**json.loads(line)) for line in lines if line.strip()]
        return [request for request in seen if vendor is None or request.vendor == vendor]


class MdmStandIn(_Urls):
    """The stand-in running in this process: its URLs, tokens, fault counts and request log."""

    def __init__(self, directory: Path, host: str = LOOPBACK, *, port: int = 0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca_file = (ca := LabCA(directory, "repogate mdm CA")).ca_file
        self.tls = ca.server_context(tuple(dict.fromkeys([*SERVER_NAMES, host])))
        self.tokens = vendors.Tokens()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[MdmRequest] = []
        self._fault_uses: dict[str, int] = {}
        (directory / REQUESTS).write_text("")
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            raise LabError(f"cannot listen on {host}: {exc}") from exc
        bracketed = f"[{host}]" if ":" in host else host
        self.base = f"https://{bracketed}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def requests(self, vendor: str | None = None) -> list[MdmRequest]:
        with self._lock:
            return [seen for seen in self._seen if vendor is None or seen.vendor == vendor]

    # Called from the handler threads.

    def state(self) -> Mapping[str, Any]:
        """The current state; none yet is an empty one (no credentials: every token refused)."""
        path = self.directory / STATE
        state: Mapping[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return state

    def claim(self, vendor: str, fault: Mapping[str, Any], target: str) -> bool:
        """Whether `fault` applies here, spending one of its `count` uses (none: forever)."""
        needle = str(fault.get("path_contains") or "")
        if fault.get("vendor") != vendor or needle not in f"{target} {unquote(target)}":
            return False
        # Without a count, expire_tokens fires once (then all tokens would always be stale).
        limit = fault.get("count", 1 if fault.get("kind") == "expire_tokens" else None)
        with self._lock:
            used = self._fault_uses.get(str(fault.get("id")), 0)
            if limit is not None and used >= limit:
                return False
            self._fault_uses[str(fault.get("id"))] = used + 1
        return True

    def record(self, seen: MdmRequest) -> None:
        with self._lock:
            self._seen.append(seen)
            with (self.directory / REQUESTS).open("a") as log:
                log.write(json.dumps(dataclasses.asdict(seen)) + "\n")


class _Server(TrackedServer):
    def __init__(self, address: tuple[str, int], standin: MdmStandIn) -> None:
        self.standin = standin
        super().__init__(address, _Handler, standin.tls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is requests.jsonl."""

    def do_GET(self) -> None:
        standin = self.server.standin
        target = urlsplit(self.path)
        query = parse_qs(target.query, keep_blank_values=True)
        vendor = vendors.PREFIXES.get(target.path.split("/")[1] if "/" in target.path else "")
        form = self._form()
        redacted = {k: ["<redacted>"] if k.lower() in SECRET_KEYS else v for k, v in query.items()}
        auth = "Authorization" in self.headers

        def seen(status: int | None, fault: str | None = None) -> MdmRequest:
            return MdmRequest(
                self.command, target.path, redacted, vendor, auth, status, fault, time.monotonic()
            )

        if vendor is None:
            self._send(seen(404), vendors.Answer(404, {"error": "no vendor at this path"}))
            return
        try:
            state = standin.state()
        except (OSError, ValueError) as exc:
            self._send(seen(500), vendors.Answer(500, {"error": f"stand-in state: {exc}"}))
            return
        truncate: str | None = None
        for fault in state.get("faults") or []:
            kind = fault.get("kind")
            if kind not in FAULT_KINDS or not standin.claim(vendor, fault, self.path):
                continue
            if kind == "delay" and standin.stopping.wait(float(fault.get("seconds", 1.0))):
                self.close_connection = True
                return
            if kind == "expire_tokens":
                standin.tokens.expire(vendor)
            elif kind == "truncate":
                truncate = fault["id"]
            elif kind == "reset":
                standin.record(seen(None, fault["id"]))
                self.close_connection = True  # and with linger 0: a TCP reset, not a FIN
                with contextlib.suppress(OSError):
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                return
            elif kind in ("status", "rate_limit", "not_found"):
                answer = _fault_answer(vendor, target.path, fault)
                self._send(seen(answer.status, fault["id"]), answer)
                return
        origin = f"https://{self.headers.get('Host') or standin.base.removeprefix('https://')}"
        authorization = self.headers.get("Authorization")
        request = vendors.Request(self.command, target.path, query, form, authorization, origin)
        answer = vendors.answer(vendor, request, state, standin.tokens)
        self._send(seen(answer.status, truncate), answer, truncate=truncate is not None)

    def do_POST(self) -> None:
        self.do_GET()

    def _form(self) -> dict[str, list[str]]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 1 << 16)) if length > 0 else b""
        if not self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {}
        return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)

    def _send(self, seen: MdmRequest, answer: vendors.Answer, *, truncate: bool = False) -> None:
        """Record, then answer: a client that got its answer finds its request logged."""
        body = json.dumps(answer.body).encode()
        self.server.standin.record(seen)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if truncate else body)  # then hang up


def _fault_answer(vendor: str, path: str, fault: Mapping[str, Any]) -> vendors.Answer:
    status = {"rate_limit": 429, "not_found": 404}.get(fault["kind"], fault.get("status", 500))
    answer = vendors.fault_answer(vendor, path, int(status))
    retry = fault.get("retry_after")
    headers = {} if retry is None else {"Retry-After": f"{float(retry):g}"}
    return dataclasses.replace(answer, headers={**answer.headers, **headers})


@contextlib.contextmanager
def mdm_standin(directory: Path, host: str = LOOPBACK, *, port: int = 0) -> Iterator[MdmStandIn]:
    """Run a stand-in in this process until the block ends, however it ends."""
    standin = MdmStandIn(directory, host, port=port)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


@dataclass
class MdmProcess(_Urls):
    """A stand-in running as `python -m lab.mdm`; `requests()` reads its requests.jsonl."""

    base: str
    ca_file: Path
    directory: Path
    process: ServerProcess

    def stop(self, timeout: float = 2.0) -> None:
        """Terminate the stand-in, killing it if it does not exit in time."""
        self.process.stop(timeout)


def start_mdm_standin(
    netns: str | None,
    directory: Path,
    host: str = LOOPBACK,
    python: str = sys.executable,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> MdmProcess:
    """Start `python -m lab.mdm` inside `netns` (None: this namespace); wait until it listens.

    In its own session, as lab.server's: a Ctrl-C reaches only the driver, which stops it.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    argv = [python, "-m", "lab.mdm", "--dir", str(directory), "--host", host]
    if env is None:
        paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    log_path = directory / "mdm.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            in_netns(netns, argv) if netns is not None else argv,
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(env),
            start_new_session=True,
        )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = proc.stdout.readline() if sel.select(timeout) else ""
    process = ServerProcess(netns or "", proc, log_path)
    try:
        ready = json.loads(line)
        return MdmProcess(ready["base"], Path(ready["ca_file"]), directory, process)
    except (ValueError, KeyError, TypeError) as exc:
        process.stop()
        detail = log_path.read_text().strip() or f"no ready line within {timeout:g}s"
        raise LabError(f"MDM stand-in in {netns or 'this namespace'} failed: {detail}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m lab.mdm`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="state, CA and request log")
    parser.add_argument("--host", default=LOOPBACK, help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="default: any free port")
    args = parser.parse_args(argv)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with mdm_standin(args.dir.resolve(), args.host, port=args.port) as standin:
        ready = {"base": standin.base, "ca_file": str(standin.ca_file), "pid": os.getpid()}
        print(json.dumps(ready), flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
