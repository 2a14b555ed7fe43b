"""repogate benchmarks: each figure is a ratio against a baseline measured in the same run.

Run as root: `make bench`. Every measurement happens in a fresh network namespace,
so the host's ruleset is never touched. The machines this runs on are noisy, so
each figure is the median of several runs, and the baselines (raw `nft -f` of the
same elements, the same change at 10,000 entries) are measured right beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))
REPEATS = 7


def addresses(count: int, offset: int = 0) -> list[str]:
    """Distinct single IPv4 addresses in 10.0.0.0/8 (no overlap with the networks)."""
    return [
        f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(offset, offset + count)
    ]


def networks(count: int) -> list[str]:
    """Non-adjacent /24s from 100.0.0.0 up, so nothing collapses: each one is an interval."""
    return [f"{100 + (i >> 15)}.{(i >> 7) & 255}.{(i * 2) & 255}.0/24" for i in range(count)]


def write_config(directory: Path, entries: list[str], name: str = "bench") -> Path:
    listing = directory / f"{name}.txt"
    listing.write_text("\n".join(entries) + "\n")
    config = directory / f"{name}.toml"
    config.write_text(
        f"""
[agent]
table = "repogate"
state_dir = "{directory}/state"

[destinations.bitbucket]
networks = ["198.51.100.0/24", "2001:db8:bb::/48"]
ports = [22, 443]

[[clients]]
name = "fleet"
type = "file"
path = "{listing}"
"""
    )
    return config


@contextmanager
def namespace() -> Iterator[str]:
    name = f"rgb{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


# What the Debian package runs: Debian's interpreter and its packages, no venv.
INSTALLED_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def python_in(ns: str, python: str, *args: str) -> list[str]:
    """argv running `python ARGS` in namespace `ns`, with the working tree's package."""
    return ["ip", "netns", "exec", ns, "env", f"PYTHONPATH={REPO / 'agent'}", python, *args]


def repogate_argv(ns: str, *args: str) -> list[str]:
    return python_in(ns, INSTALLED_PYTHON, "-m", "repogate", *args)


def cold_load(work: Path) -> dict[str, float]:
    """100,000 addresses and 1,000 networks into an empty namespace."""
    singles, nets = addresses(100_000), networks(1_000)
    raw = work / "raw.nft"
    raw.write_text(
        "table inet raw {\n"
        f"  set fleet_v4_addr {{ type ipv4_addr; elements = {{ {', '.join(singles)} }} }}\n"
        f"  set fleet_v4_net {{ type ipv4_addr; flags interval; "
        f"elements = {{ {', '.join(nets)} }} }}\n"
        "}\n"
    )
    config = write_config(work, singles + nets)

    def raw_once() -> float:
        with namespace() as ns:
            return timed(["ip", "netns", "exec", ns, "nft", "-f", str(raw)])

    def repogate_once() -> float:
        with namespace() as ns:
            return timed(repogate_argv(ns, "sync", "--config", str(config)))

    # Interleave so drifting machine load hits both alike.
    raw_times, repogate_times = [], []
    for _ in range(REPEATS):
        raw_times.append(raw_once())
        repogate_times.append(repogate_once())
    raw_s, repogate_s = statistics.median(raw_times), statistics.median(repogate_times)
    return {"raw_nft_s": raw_s, "repogate_s": repogate_s, "ratio": repogate_s / raw_s}


def change_100(work: Path, size: int) -> dict[str, float]:
    """Change 100 of `size` addresses with the whole `repogate sync` command.

    The daemon's reconcile of the same change is measured through `repogate run` by
    bench/daemon.py.
    """
    base = addresses(size)
    changed = base[100:] + addresses(100, offset=size)
    configs = [write_config(work, base, f"a{size}"), write_config(work, changed, f"b{size}")]
    cli_times = []
    with namespace() as ns:
        for i in range(REPEATS):
            subprocess.run(
                repogate_argv(ns, "sync", "--config", str(configs[i % 2])),
                check=True,
                capture_output=True,
            )
            cli_times.append(
                timed(repogate_argv(ns, "sync", "--config", str(configs[(i + 1) % 2])))
            )
    return {"cli_sync_s": statistics.median(cli_times)}


def peak_rss_mb(work: Path) -> float:
    """Peak RSS of one `repogate sync` of 100,000 addresses and 1,000 networks."""
    config = write_config(work, addresses(100_000) + networks(1_000), "rss")
    with namespace() as ns:
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import resource, subprocess, sys\n"
                "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                *repogate_argv(ns, "sync", "--config", str(config)),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    return int(probe.stdout) / 1024


INNER_INTERVAL = r"""
import json, sys, time
from repogate.nft.backend import NftBackend
size, deletes = int(sys.argv[1]), int(sys.argv[2])
nets = [f"{100 + (i >> 15)}.{(i >> 7) & 255}.{(i * 2) & 255}.0/24" for i in range(size)]
def elem(n):
    a, l = n.split("/"); return {"prefix": {"addr": a, "len": int(l)}}
ref = {"family": "inet", "table": "t", "name": "n"}
b = NftBackend()
b.apply([{"add": {"table": {"family": "inet", "name": "t"}}},
         {"add": {"set": {**ref, "type": "ipv4_addr", "flags": ["interval"]}}},
         {"add": {"element": {**ref, "elem": [elem(n) for n in nets]}}}])
t = time.perf_counter()
b.apply([{"delete": {"element": {**ref, "elem": [elem(n) for n in nets[:deletes]]}}}])
delete_s = time.perf_counter() - t
rest = nets[deletes:]
t = time.perf_counter()
b.apply([{"flush": {"set": ref}}, {"add": {"element": {**ref, "elem": [elem(n) for n in rest]}}}])
refill_s = time.perf_counter() - t
print(json.dumps({"delete_s": delete_s, "refill_s": refill_s}))
"""


def interval_strategy(size: int, deletes: int) -> dict[str, float]:
    """Element deletes vs flush-and-refill in one transaction, for an interval set."""
    with namespace() as ns:
        out = subprocess.run(
            python_in(ns, sys.executable, "-c", INNER_INTERVAL, str(size), str(deletes)),
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the interval-set study")
    parser.add_argument("--skip-dns", action="store_true", help="skip the DNS benchmark")
    parser.add_argument("--skip-daemon", action="store_true", help="skip the daemon benchmark")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces and nftables)", file=sys.stderr)
        return 2
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=True)
    nft_version = nft.stdout
    print(
        f"# repogate runs as installed: {INSTALLED_PYTHON}, bytecode compiled; "
        f"{nft_version.strip()}, kernel {os.uname().release}, "
        f"python {sys.version.split()[0]}, median of {REPEATS}"
    )
    # Installed, repogate runs from bytecode (the Debian package's postinst compiles
    # it); measure it that way even where PYTHONDONTWRITEBYTECODE is set.
    subprocess.run(
        [INSTALLED_PYTHON, "-m", "compileall", "-q", str(REPO / "agent" / "repogate")], check=True
    )
    with tempfile.TemporaryDirectory(prefix="repogate-bench-") as tmp:
        work = Path(tmp)
        cold = cold_load(work)
        print(
            f"cold load 100,000 addresses + 1,000 networks: repogate {cold['repogate_s']:.3f} s, "
            f"raw nft -f {cold['raw_nft_s']:.3f} s, ratio {cold['ratio']:.2f} (target <= 1.5)"
        )
        small, large = change_100(work, 10_000), change_100(work, 100_000)
        print(
            f"change 100 of 100,000 addresses, the whole `repogate sync` command (reads the "
            f"file and the kernel's 100,000 elements): {large['cli_sync_s']:.3f} s; "
            f"at 10,000: {small['cli_sync_s']:.3f} s"
        )
        print(
            f"peak RSS of `repogate sync` at 100,000 entries: {peak_rss_mb(work):.0f} MB "
            "(target <= 150 MB)"
        )
        if not args.quick:
            print("interval set, delete k elements vs flush+refill in one transaction:")
            for size, deletes in (
                (1_000, 10),
                (10_000, 1),
                (10_000, 10),
                (10_000, 100),
                (30_000, 10),
                (30_000, 100),
            ):
                r = interval_strategy(size, deletes)
                delete_ms, refill_ms = r["delete_s"] * 1000, r["refill_s"] * 1000
                print(
                    f"  {size:>6} networks, delete {deletes:>3}: deletes {delete_ms:8.1f} ms, "
                    f"refill {refill_ms:8.1f} ms, ratio {delete_ms / refill_ms:.2f}"
                )
    if not args.skip_daemon:
        # The daemon at 10,000 and 100,000 addresses, through `repogate run` (about 4 min).
        subprocess.run([sys.executable, str(REPO / "bench" / "daemon.py")], check=True)
    if not args.skip_dns:
        # Its own process: bench/dns_resolution.py keeps this directory off sys.path,
        # where lab/ and bench/ names could shadow dnspython's `dns` package.
        subprocess.run([sys.executable, str(REPO / "bench" / "dns_resolution.py")], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
