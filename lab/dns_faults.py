"""What the DNS faults need beside a DNS server: a slow path to it, and a count of TCP queries.

`SlowRelay` holds every UDP query for `delay` seconds before passing it to the real
server behind it, and passes the answer back: a DNS server slower than the resolver's
timeout. It does what `tc qdisc ... netem delay` would do on the server's interface;
it exists because kernels without sch_netem (this lab's CI VM among them) cannot, while
a relay works everywhere. The delay changes while it runs (`set_delay`), so the daemon
meets a server that was fast, becomes slow and recovers, at the same address. UDP only:
the slow fault has no truncated answers.

`TcpQueryCounter` counts TCP connections to port 53 in a namespace with an nftables
counter, so a test can tell that truncated answers really were asked again over TCP.

Run as a module (`python -m lab.dns_faults relay ...`); the relay's program half runs
inside the namespace, where its sockets must be opened.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lab.errors import LabError
from lab.managed import Managed
from lab.netns import in_netns, run

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_WAIT = 5.0  # seconds the relay waits for the real server's answer
COUNTER_TABLE = "rg_dns_tcp"


@dataclass
class SlowRelay(Managed):
    """A UDP relay on `listen` (address, port) to `upstream`, in `netns`, delaying queries."""

    netns: str | None
    listen: tuple[str, int]
    upstream: tuple[str, int]
    process: subprocess.Popen[str] | None = field(default=None, init=False)

    def start(self) -> None:
        argv = [sys.executable, "-m", "lab.dns_faults", "relay"]
        argv += [self.listen[0], str(self.listen[1]), self.upstream[0], str(self.upstream[1])]
        if self.netns is not None:
            argv = in_netns(self.netns, argv)
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        self._expect("ready")

    def set_delay(self, seconds: float) -> None:
        """Hold each query received from now on `seconds` (those held keep their time)."""
        stdin, _stdout = self._pipes()
        stdin.write(f"{seconds}\n")
        stdin.flush()
        self._expect("ok")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # end of commands: the relay exits
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        if self.process is None or self.process.stdin is None or self.process.stdout is None:
            raise LabError("the DNS relay is not running")
        return self.process.stdin, self.process.stdout

    def _expect(self, word: str) -> None:
        _stdin, stdout = self._pipes()
        line = stdout.readline().strip()
        if line != word:
            code = self.process.poll() if self.process is not None else None
            raise LabError(f"DNS relay said {line!r}, not {word!r} (exit {code})")


def _relay(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """The program half: one selector loop, held queries in a heap by their release time."""
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    front = socket.socket(family, socket.SOCK_DGRAM)
    front.bind(listen)
    front.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(front, selectors.EVENT_READ, "front")  # data: what the socket is
    selector.register(sys.stdin, selectors.EVENT_READ, "control")
    held: list[tuple[float, int, bytes, tuple[str, int]]] = []
    asked: dict[socket.socket, tuple[tuple[str, int], float]] = {}  # -> (client, give up at)
    delay, count = 0.0, 0
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _due, _n, query, client = heapq.heappop(held)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(upstream)
            sock.send(query)
            selector.register(sock, selectors.EVENT_READ, sock)
            asked[sock] = (client, now + UPSTREAM_WAIT)
        for sock, (_client, until) in list(asked.items()):
            if until <= now:
                selector.unregister(sock)
                sock.close()
                del asked[sock]
        wake = held[0][0] - now if held else 0.5
        for key, _mask in selector.select(max(0.0, min(wake, 0.5))):
            if key.data == "control":
                line = sys.stdin.readline()
                if not line:
                    return
                delay = float(line)
                print("ok", flush=True)
            elif key.data == "front":
                query, client = front.recvfrom(65535)
                count += 1
                heapq.heappush(held, (time.monotonic() + delay, count, query, client))
            else:
                sock = key.data
                client, _until = asked.pop(sock)
                selector.unregister(sock)
                # The server refused (ICMP): nothing to pass on, the client times out.
                with contextlib.suppress(OSError):
                    front.sendto(sock.recv(65535), client)
                sock.close()


class TcpQueryCounter:
    """TCP connections to port 53 in `netns`, counted by an nftables rule on their SYN."""

    def __init__(self, netns: str) -> None:
        self.netns = netns

    def _nft(self, *args: str) -> str:
        return run(in_netns(self.netns, ["nft", *args])).stdout

    def __enter__(self) -> TcpQueryCounter:
        self._nft(
            f"add table inet {COUNTER_TABLE}; "
            f"add chain inet {COUNTER_TABLE} input "
            "{ type filter hook input priority 0; policy accept; }; "
            f"add rule inet {COUNTER_TABLE} input tcp dport 53 tcp flags & (syn | ack) == syn "
            "counter"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._nft("delete", "table", "inet", COUNTER_TABLE)

    def count(self) -> int:
        listing = json.loads(self._nft("-j", "list", "table", "inet", COUNTER_TABLE))
        for item in listing["nftables"]:
            for expression in item.get("rule", {}).get("expr", []):
                if "counter" in expression:
                    return int(expression["counter"]["packets"])
        raise LabError(f"no counter in table inet {COUNTER_TABLE} of {self.netns}")


def main(argv: Sequence[str]) -> int:
    if len(argv) == 5 and argv[0] == "relay":
        _relay((argv[1], int(argv[2])), (argv[3], int(argv[4])))
        return 0
    print("usage: python -m lab.dns_faults relay ADDRESS PORT UPSTREAM UPSTREAM_PORT")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
