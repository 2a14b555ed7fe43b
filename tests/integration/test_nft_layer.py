"""The nft layer against the kernel: generation ids, netlink reads, the table monitor.

Each test gets a fresh network namespace (the `netns` fixture deletes it even on
failure); the code under test runs inside it as `python -c`, with the working
tree's package, and prints JSON for the assertions here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.integration.conftest import REPO, Namespace, needs_root

pytestmark = [pytest.mark.root, needs_root]

TABLE = """
table inet repogate {{
  counter allowed_bb {{ packets 5 bytes 300 }}
  counter denied_bb {{ }}
  set client_v4 {{
    type ipv4_addr
    {elements}
  }}
  chain gate {{
    ip saddr @client_v4 tcp dport 22 counter name "allowed_bb" accept comment "allow [abc]"
    tcp dport 22 counter name "denied_bb" reject with tcp reset
  }}
}}
table inet other {{
  set s {{ type ipv4_addr; }}
}}
"""


def load(netns: Namespace, elements: int = 0) -> None:
    listed = ", ".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(elements))
    path = netns.workdir / "table.nft"
    path.write_text(TABLE.format(elements=f"elements = {{ {listed} }}" if elements else ""))
    netns.nft("-f", str(path))


def inside(netns: Namespace, code: str, *args: str) -> Any:
    """Run `code` in the namespace; it prints one JSON document as its last line."""
    prelude = "import json, os, subprocess, sys, threading, time\n"
    argv = ["env", f"PYTHONPATH={REPO / 'agent'}", sys.executable, "-c", prelude + code]
    result = netns.run(*argv, *args, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_generation_increases_with_each_commit(netns: Namespace) -> None:
    ids = inside(
        netns,
        """
from repogate.nft.backend import NftBackend
backend = NftBackend()
before = backend.generation()
subprocess.run(["nft", "add", "table", "inet", "x"], check=True)
middle = backend.generation()
backend.apply([{"add": {"table": {"family": "inet", "name": "y"}}}])
print(json.dumps([before, middle, backend.generation(), backend.generation()]))
""",
    )
    assert ids[0] < ids[1] < ids[2] == ids[3]


MONITOR = """
from repogate.nft.backend import NftBackend
from repogate.nft.monitor import TableMonitor

def element(table, name, address):
    ref = {"family": "inet", "table": table, "name": name}
    return [{"add": {"element": {**ref, "elem": [address]}}}]

def nft(*argv):
    subprocess.run(["nft", *argv], check=True)

def wait_for(events, count):
    deadline = time.monotonic() + 10
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.02)

backend, events = NftBackend(), []
monitor = TableMonitor("repogate", events.append, own_tasks=backend.committing_tasks)
monitor.start()
# Ours, from the main thread and from another (the kernel records the thread's id).
backend.apply(element("repogate", "client_v4", "10.9.0.1"))
second = element("repogate", "client_v4", "10.9.0.2")
worker = threading.Thread(target=backend.apply, args=(second,))
worker.start(); worker.join()
# Someone else's, to another table: not ours to report.
nft("add", "element", "inet", "other", "s", "{ 10.9.0.3 }")
# Someone else's, to the watched table. Notifications arrive in commit order, so
# anything reported for the steps above would come before this one.
nft("add", "element", "inet", "repogate", "client_v4", "{ 10.9.0.4 }")
wait_for(events, 1)
watched = list(events)
monitor.set_table("other")
nft("add", "element", "inet", "repogate", "client_v4", "{ 10.9.0.5 }")
nft("flush", "set", "inet", "other", "s")
wait_for(events, 2)
started = time.monotonic()
monitor.close()
print(json.dumps({"watched": watched, "renamed": events[len(watched):],
                  "close_s": time.monotonic() - started, "running": monitor.running}))
"""


def test_monitor_reports_only_foreign_changes_to_the_watched_table(netns: Namespace) -> None:
    load(netns)
    seen = inside(netns, MONITOR)
    (watched,) = seen["watched"]
    assert watched.startswith("table inet repogate changed by nft (pid ")
    (renamed,) = seen["renamed"]
    assert renamed.startswith("table inet other changed by nft")
    assert seen["close_s"] < 1.0 and seen["running"] is False


def test_monitor_reports_an_overflow(netns: Namespace) -> None:
    load(netns)
    listed = ", ".join(f"10.{i >> 8 & 255}.{i & 255}.1" for i in range(20_000))
    batch = netns.workdir / "batch.nft"
    batch.write_text(f"add element inet other s {{ {listed} }}\n")
    reasons = inside(
        netns,
        """
from repogate.nft.monitor import OVERFLOW_REASON, TableMonitor
events = []
monitor = TableMonitor("repogate", events.append, receive_buffer=4096)
monitor.start()
# Starve the monitor thread while nft commits, so its small buffer must overflow:
# hold the GIL in a pure-Python loop with thread switches all but disabled.
sys.setswitchinterval(10)
nft = subprocess.Popen(["nft", "-f", sys.argv[1]])
end = time.monotonic() + 3
while time.monotonic() < end:
    pass
sys.setswitchinterval(0.005)
assert nft.wait() == 0
deadline = time.monotonic() + 5
while not events and time.monotonic() < deadline:
    time.sleep(0.02)
monitor.close()
print(json.dumps([reason == OVERFLOW_REASON for reason in events]))
""",
        str(batch),
    )
    assert reasons and all(reasons)  # a lost batch is reported, whatever table it touched


def test_netlink_reads_match_libnftables_with_100k_elements(netns: Namespace) -> None:
    load(netns, elements=100_000)
    found = inside(
        netns,
        """
from repogate.nft.backend import NftBackend
backend = NftBackend()
started = time.perf_counter()
table = backend.read_table("repogate")
read_table_s = time.perf_counter() - started
started = time.perf_counter()
counters = backend.read_counters("repogate")
counters_s = time.perf_counter() - started
print(json.dumps({
    "elements": len(table.sets["client_v4"].elements),
    "counters": {name: [c.packets, c.bytes] for name, c in counters.items()},
    "listed_counters": {name: [c.packets, c.bytes] for name, c in table.counters.items()},
    "comments": backend.chain_comments("repogate", "gate"),
    "listed_comments": table.chains["gate"].rule_comments,
    "missing": [backend.read_counters("nope"), backend.chain_comments("repogate", "nope"),
                backend.chain_comments("nope", "gate"), backend.read_table("nope")],
    "read_table_s": read_table_s, "counters_s": counters_s,
}))
""",
    )
    assert found["elements"] == 100_000
    assert found["counters"] == {"allowed_bb": [5, 300], "denied_bb": [0, 0]}
    assert found["counters"] == found["listed_counters"]
    assert found["comments"] == ["allow [abc]", None] == found["listed_comments"]
    assert found["missing"] == [{}, None, None, None]
    # Counters never list the set: orders of magnitude below the listing, same run.
    assert found["counters_s"] * 20 < found["read_table_s"], found


def test_reads_and_applies_use_separate_contexts(netns: Namespace) -> None:
    load(netns, elements=1000)
    after = inside(
        netns,
        """
from repogate.nft.backend import NftBackend
backend = NftBackend()
backend.read_table("repogate")
backend.apply([{"add": {"element": {"family": "inet", "table": "repogate",
                                    "name": "client_v4", "elem": ["10.99.0.1"]}}}])
print(json.dumps(len(backend.read_table("repogate").sets["client_v4"].elements)))
""",
    )
    assert after == 1001
