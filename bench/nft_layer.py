"""The nft layer at 100,000 set elements: listings, netlink reads, context separation.

Run as root: `python3 bench/nft_layer.py`. Everything happens in a fresh network
namespace. Each figure is the median of several runs; the ratios compare two ways
of doing the same thing measured side by side in the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.run import INSTALLED_PYTHON, REPEATS, addresses, namespace, python_in  # noqa: E402

SIZE = 100_000

INNER = r"""
import json, os, statistics, subprocess, sys, threading, time
import nftables
from repogate.nft.backend import NftBackend
from repogate.nft.monitor import TableMonitor

repeats, batch = int(sys.argv[1]), sys.argv[2]
def median(call, times):
    runs = []
    for _ in range(times):
        started = time.perf_counter(); call(); runs.append(time.perf_counter() - started)
    return statistics.median(runs)

def hundred(i):
    elem = [f"11.{i}.{j >> 8}.{j & 255}" for j in range(100)]
    return [{"add": {"element": {"family": "inet", "table": "repogate",
                                 "name": "client_v4", "elem": elem}}}]

separate = NftBackend()
shared_context = nftables.Nftables()
shared = NftBackend(context_factory=lambda: shared_context)  # reads and applies on one
legacy = nftables.Nftables(); legacy.set_json_output(True)
out = {
    "read_table_s": median(lambda: separate.read_table("repogate"), repeats),
    "generation_s": median(separate.generation, 1000),
    "read_counters_s": median(lambda: separate.read_counters("repogate"), 1000),
    "chain_comments_s": median(lambda: separate.chain_comments("repogate", "gate"), 1000),
    "list_counters_s": median(lambda: legacy.cmd("list counters table inet repogate"), 3),
}
applies = {"separate": [], "shared": []}
for i in range(repeats):
    for name, backend, offset in (("separate", separate, 0), ("shared", shared, 100)):
        backend.read_table("repogate")
        applies[name].append(backend.apply(hundred(offset + i)))
out["apply_separate_s"] = statistics.median(applies["separate"])
out["apply_shared_s"] = statistics.median(applies["shared"])

done, reasons = threading.Event(), []
with TableMonitor("other", lambda reason: (reasons.append(reason), done.set())) as monitor:
    cpu = time.process_time()
    subprocess.run(["nft", "-f", batch], check=True)
    returned = time.perf_counter()
    done.wait(60)
    out["monitor_lag_s"] = time.perf_counter() - returned
    out["monitor_cpu_s"] = time.process_time() - cpu
out["monitor_reason"] = reasons[0] if reasons else "nothing"
print(json.dumps(out))
"""


def main() -> int:
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces and nftables)", file=sys.stderr)
        return 2
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=True)
    print(
        f"# nft layer: {INSTALLED_PYTHON}, {nft.stdout.strip()}, kernel {os.uname().release}, "
        f"{SIZE:,} elements, median of {REPEATS}"
    )
    with tempfile.TemporaryDirectory(prefix="repogate-bench-") as tmp, namespace() as ns:
        work = Path(tmp)
        table = work / "table.nft"
        table.write_text(
            "table inet repogate {\n"
            "  counter allowed_bb { }\n  counter denied_bb { }\n"
            "  set client_v4 { type ipv4_addr; "
            f"elements = {{ {', '.join(addresses(SIZE))} }}; }}\n"
            '  chain gate { ip saddr @client_v4 counter name "allowed_bb" accept comment "a"; }\n'
            "}\ntable inet other { set s { type ipv4_addr; }; }\n"
        )
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(table)], check=True)
        batch = work / "batch.nft"
        batch.write_text(f"add element inet other s {{ {', '.join(addresses(SIZE))} }}\n")
        inner = subprocess.run(
            python_in(ns, INSTALLED_PYTHON, "-c", INNER, str(REPEATS), str(batch)),
            check=True,
            capture_output=True,
            text=True,
        )
    r = json.loads(inner.stdout)
    print(f"read_table (libnftables listing, read context): {r['read_table_s']:.3f} s")
    print(f"generation() over netlink: {r['generation_s'] * 1e6:.0f} us")
    print(
        f"read_counters() over netlink: {r['read_counters_s'] * 1e6:.0f} us; "
        f"`list counters table` in libnftables: {r['list_counters_s']:.3f} s, "
        f"ratio {r['list_counters_s'] / r['read_counters_s']:.0f}"
    )
    print(f"chain_comments() over netlink: {r['chain_comments_s'] * 1e6:.0f} us")
    print(
        f"apply 100 elements after a read: apply context {r['apply_separate_s'] * 1000:.1f} ms, "
        f"one shared context {r['apply_shared_s'] * 1000:.1f} ms, "
        f"ratio {r['apply_shared_s'] / r['apply_separate_s']:.1f}"
    )
    print(
        f"monitor, a foreign {SIZE:,}-element commit to another table: seen "
        f"{r['monitor_lag_s']:.3f} s after nft returned, {r['monitor_cpu_s']:.2f} s CPU "
        f"({r['monitor_reason']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
