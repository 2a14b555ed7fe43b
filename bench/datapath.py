"""Data-path cost of the owned table: TCP connections/s and bulk throughput through a gateway.

Every forwarded packet enters the forward hook, so the rule layout sets a per-packet price no
control-plane figure shows. Client - gateway - server namespaces over veths; the table that
`repogate sync` loads (100,000 addresses in the hash set, 100,000 networks in the interval
set by default) stays in the gateway, whose forward hook is pointed in turn at
  none      nothing: no base chain, so no hook, no nf_tables code on the path;
  before    the flat layout repogate wrote before nft.layout, rebuilt here from the loaded
            rules (flat_gate): one chain, every rule client, destination, ports, so every
            forwarded packet, replies included, pays the client lookups;
  repogate  the layout `repogate sync` loaded (nft.layout): port, destination, then client.
For each metric of each round every layout runs once, in rotated order, so drifting load hits
all alike; a figure is the median of the per-round ratios layout / none, with IQR and range.
Tools from Debian main: wrk (`Connection: close` to nginx on 443: a new TCP connection per
request; netperf's TCP_CRR is in non-free only), iperf3 on 22. Goal: ratio >= 0.98.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import run as base  # noqa: E402
from lab import netns  # noqa: E402
from lab.errors import LabError as BenchError  # noqa: E402

Json = dict[str, Any]
TABLE = "repogate"  # what bench.run.write_config names it
SERVER, SERVER_GW = "198.51.100.10", "198.51.100.1"  # inside the protected 198.51.100.0/24
CLIENT, CLIENT_GW = "10.0.3.7", "10.0.3.1"  # both among addresses(100_000): 10.0.0.0-10.1.134.159
STRANGER = "10.250.0.7"  # in no client set: must be refused on 443 whenever a table is loaded
LAYOUTS = ("none", "before", "repogate")
PERF_COMMS = ",".join(["wrk", "nginx", "iperf3"] + [f"ksoftirqd/{n}" for n in range(64)])
NFT_SYMBOL = re.compile(r"^\s*([\d.]+)%\s+\[k\] (?:nft_|__nft|nf_hook_slow)", re.MULTILINE)
APT = "wrk iperf3 nginx ethtool linux-perf"
NOISY = 0.04  # an IQR of ratios wider than this cannot tell 0.98 from 1.0
METRICS = {"crr": "connections/s", "up": "upload Mbit/s", "down": "download Mbit/s"}
FLAT = "gate_flat"  # the chain holding the layout before nft.layout
REF = {"family": "inet", "table": TABLE}
TCP_DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}
L4PROTO_TCP = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
COUNTERS = """
import json, sys
from repogate.nft.query import NetlinkQuery
print(json.dumps({k: v.packets for k, v in NetlinkQuery().counters(sys.argv[1]).items()}))
"""
REFUSAL_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 443), 2, (sys.argv[2], 0)); print("open")
except OSError as exc:
    print("refused" if isinstance(exc, ConnectionRefusedError) else f"error {exc}")
"""
NGINX_CONF = """\
daemon off; master_process on; user root; worker_processes 2; pid {work}/nginx.pid;
events {{ worker_connections 8192; }}
http {{ access_log off; server {{ listen {server}:443 backlog=4096; return 204; }} }}
"""


def nft(ns: str, *args: str) -> str:
    return netns.run(netns.in_netns(ns, ["nft", *args])).stdout


def flat_gate(listed: list[Json]) -> list[Json]:
    """The rules of the flat layout (before nft.layout) for the rules repogate loaded: for
    each jump of `gate`, in order, each rule of its destination's chain with the destination
    match put back after the client match, and the port match the jumps made where the rule
    has none; the TCP test a reset needed without ports goes.
    """
    rules: dict[str, list[Json]] = {}
    for rule in listed:
        rules.setdefault(rule["chain"], []).append(rule)
    hook_ports = sorted(p for rule in rules["forward"] for p in _ports(rule["expr"][0]))
    flat: list[Json] = []
    for dispatch in rules["gate"]:
        daddr, *rest = dispatch["expr"]
        ports = _ports(rest[0]) if len(rest) == 2 else hook_ports
        right: Any = ports[0] if len(ports) == 1 else {"set": ports}
        dport = {"match": {"op": "==", "left": TCP_DPORT, "right": right}}
        for rule in rules[rest[-1]["jump"]["target"]]:
            expr = [e for e in rule["expr"] if e != L4PROTO_TCP]
            at = max([i + 1 for i, e in enumerate(expr) if _is_match(e, "saddr", "iifname")] + [0])
            own = [e for e in expr if _is_match(e, "dport")]
            expr[at:at] = [daddr] if own else [daddr, dport]
            flat.append({**REF, "chain": FLAT, "expr": expr, "comment": rule.get("comment", "")})
    return flat


def _unlisted(rule: Json) -> Json:
    """A listed rule as an `add rule` body: a handle there would mean a position."""
    return {k: v for k, v in rule.items() if k != "handle"}


def _is_match(expr: Json, *fields: str) -> bool:
    left = expr.get("match", {}).get("left", {})
    return (
        left.get("payload", {}).get("field") in fields or left.get("meta", {}).get("key") in fields
    )


def _ports(expr: Json) -> list[int]:
    right = expr["match"]["right"]
    return sorted(right["set"]) if isinstance(right, dict) else [right]


@dataclass
class Gateway:
    """The three namespaces, and the layout the gateway's forward hook runs."""

    work: Path
    tag: str = field(default_factory=netns.new_tag)
    hooked: str = "none"  # the layout the forward hook runs; "none": no base chain
    forward: list[Json] = field(default_factory=list)  # the rules of repogate's forward chain
    hook: Json = field(default_factory=dict)  # its type, hook, priority and policy

    def ns(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def build(self, source: str, client_extra: list[str], offload: bool) -> None:
        client, gw, server = self.ns("cli"), self.ns("gw"), self.ns("srv")
        for name in (client, gw, server):
            netns.add_netns(name)
        netns.add_veth(client, "c0", gw, "g0")
        netns.add_veth(gw, "g1", server, "s0")
        for ns, ifname, cidr in (
            (client, "c0", f"{CLIENT}/24"),
            (gw, "g0", f"{CLIENT_GW}/24"),
            (gw, "g1", f"{SERVER_GW}/24"),
            (server, "s0", f"{SERVER}/24"),
        ):
            netns.add_address(ns, ifname, cidr)
            netns.link_up(ns, ifname)
            if not offload:  # every forwarded packet MTU-sized: the per-packet worst case
                off = ["tso", "off", "gso", "off", "gro", "off"]
                netns.run(netns.in_netns(ns, ["ethtool", "-K", ifname, *off]))
        for address in client_extra:
            netns.add_address(client, "c0", f"{address}/32")
            netns.run([netns.IP, "-n", gw, "route", "add", f"{address}/32", "via", CLIENT])
        # The client's connections leave from `source` (wrk cannot bind an address).
        netns.run(
            [netns.IP, "-n", client, "route", "add", "default", "via", CLIENT_GW, "src", source]
        )
        netns.add_default_route(server, SERVER_GW)
        netns.sysctl(gw, {"net.ipv4.ip_forward": "1"})
        netns.sysctl(client, {"net.ipv4.ip_local_port_range": "1024 65535"})
        netns.sysctl(server, {"net.core.somaxconn": "8192", "net.ipv4.tcp_max_syn_backlog": "8192"})

    def prepare_tables(self, config: Path) -> None:
        """Load the sets and rules the daemon's way, add the flat layout's chain beside them."""
        gw = self.ns("gw")
        sync = base.repogate_argv(gw, "sync", "--config", str(config))
        subprocess.run(sync, check=True, capture_output=True)
        listing = json.loads(nft(gw, "-j", "-t", "list", "table", "inet", TABLE))["nftables"]
        rules = [_unlisted(i["rule"]) for i in listing if "rule" in i]
        self.forward = [rule for rule in rules if rule["chain"] == "forward"]
        chains = {i["chain"]["name"]: i["chain"] for i in listing if "chain" in i}
        self.hook = {k: chains["forward"][k] for k in ("type", "hook", "prio", "policy")}
        commands = [{"add": {"chain": {**REF, "name": FLAT}}}]
        commands += [{"add": {"rule": rule}} for rule in flat_gate(rules)]
        self._apply([*commands, {"delete": {"chain": {**REF, "name": "forward"}}}])
        self.hooked = "none"

    def switch(self, layout: str) -> None:
        """Point the forward hook at a layout; `none` has no hook at all.

        Without a base chain no netfilter hook is registered in the gateway, so packets take
        the path they take with no table (perf finds no nf_tables code), and a switch is a
        20 ms transaction instead of a 2-7 s reload of 200,000 elements.
        """
        commands: list[Json] = []
        if self.hooked != "none":
            commands.append({"delete": {"chain": {**REF, "name": "forward"}}})
        if layout != "none":
            commands.append({"add": {"chain": {**REF, "name": "forward", **self.hook}}})
            jump = [{**REF, "chain": "forward", "expr": [{"jump": {"target": FLAT}}]}]
            for rule in jump if layout == "before" else self.forward:
                commands.append({"add": {"rule": rule}})
        self._apply(commands)
        self.hooked = layout

    def _apply(self, commands: list[Json]) -> None:
        batch = {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}
        (self.work / "switch.json").write_text(json.dumps(batch))
        nft(self.ns("gw"), "-j", "-f", str(self.work / "switch.json"))

    def counters(self) -> dict[str, int]:
        """Packets per named counter, over netlink: `nft list` would fetch every element."""
        argv = base.python_in(self.ns("gw"), base.INSTALLED_PYTHON, "-c", COUNTERS, TABLE)
        return {k: int(v) for k, v in json.loads(netns.run(argv).stdout).items()}


@contextmanager
def gateway(work: Path, source: str, extra: list[str], offload: bool) -> Iterator[Gateway]:
    gw = Gateway(work)
    with ExitStack() as stack:
        for role in ("cli", "gw", "srv"):  # registered first: torn down even if build fails
            stack.callback(_delete_netns, gw.ns(role))
        gw.build(source, extra, offload)
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, server=SERVER))
        nginx = ["nginx", "-p", str(work), "-c", str(conf), "-e", str(work / "nginx.err")]
        for argv in (nginx, ["iperf3", "-s", "-p", "22", "-B", SERVER]):
            quiet = subprocess.DEVNULL  # iperf3 says "interrupt" when stopped
            proc = subprocess.Popen(netns.in_netns(gw.ns("srv"), argv), stdout=quiet, stderr=quiet)
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
        time.sleep(0.5)
        yield gw


def _delete_netns(name: str) -> None:
    if name in netns.list_netns():
        netns.delete_netns(name)


def connections_per_second(gw: Gateway, seconds: float, connections: int) -> float:
    """wrk, a new TCP connection per request: nginx closes each one after its 204."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s"]
    argv += ["-H", "Connection: close", f"http://{SERVER}:443/"]
    out = netns.run(netns.in_netns(gw.ns("cli"), argv), timeout=seconds + 30).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout|xx.*:) (\d+)", out))
    if rate is None or done is None:
        raise BenchError(f"wrk said:\n{out}")
    if errors > 0.01 * int(done.group(1)):  # socket errors, and "Non-2xx or 3xx responses"
        raise BenchError(f"wrk saw errors on over 1 % of its requests:\n{out}")
    return float(rate.group(1))


def throughput(gw: Gateway, seconds: float, reverse: bool) -> float:
    """iperf3, one TCP stream for `seconds` after a 1 s warm-up; Mbit/s received."""
    argv = ["iperf3", "-c", SERVER, "-p", "22", "-t", f"{seconds:g}", "-O", "1", "-J"]
    out = netns.run(netns.in_netns(gw.ns("cli"), argv + ["-R"] * reverse), timeout=seconds + 30)
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6


def nft_share(data: Path) -> float:
    """Percent of the benchmark's CPU samples spent in nf_tables, the hook included."""
    argv = ["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "-q", "--stdio"]
    argv += ["--comms", PERF_COMMS, "--percentage", "relative"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return sum(float(m.group(1)) for m in NFT_SYMBOL.finditer(out))


def measure(gw: Gateway, layout: str, metric: str, args: argparse.Namespace) -> tuple[float, float]:
    """One metric under one layout, checked: the stranger refused by a table and let through
    without one; the client's packets counted by the accept rule (by nothing without a hook),
    none refused. With --perf (for every layout alike: perf has a cost), also the share of the
    CPU spent in nf_tables, which, unlike a rate, barely moves with the machine's load."""
    gw.switch(layout)
    time.sleep(args.settle)
    probe = [base.INSTALLED_PYTHON, "-c", REFUSAL_PROBE, SERVER, STRANGER]
    answer = netns.run(netns.in_netns(gw.ns("cli"), probe)).stdout.strip()
    if answer != ("open" if layout == "none" else "refused"):
        raise BenchError(f"{layout}: an unapproved client to 443 got {answer!r}")
    before, data, perf = gw.counters(), gw.work / "perf.data", None
    if args.perf:
        record = ["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", "2000", "-o", str(data)]
        perf = subprocess.Popen([*record, "sleep", f"{args.seconds:g}"], stderr=subprocess.DEVNULL)
    if metric == "crr":
        value = connections_per_second(gw, args.seconds, args.connections)
    else:
        value = throughput(gw, args.seconds, reverse=metric == "down")
    after = gw.counters()
    allowed, denied = (after[k] - before[k] for k in ("allowed_bitbucket", "denied_bitbucket"))
    if denied != 0 or (allowed > 0) != (layout != "none"):
        raise BenchError(f"{layout} {metric}: allowed +{allowed}, denied +{denied} packets")
    if perf is not None and perf.wait() != 0:
        raise BenchError(f"perf record exited {perf.returncode}")
    return value, nft_share(data) if perf is not None else 0.0


Figures = dict[str, dict[str, list[float]]]  # layout -> metric -> one value per round


def summarise(results: Figures, shares: Figures) -> Json:
    """Per metric and layout: the spread of the per-round ratios to none; perf's shares."""
    summary: Json = {"nf_tables_percent": {}}
    for metric in METRICS:
        baseline = results["none"][metric]
        summary[metric] = {"none_median": statistics.median(baseline)}
        for layout in LAYOUTS[1:]:
            ratios = [x / b for x, b in zip(results[layout][metric], baseline, strict=True)]
            q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
            spread = {"median": q2, "q1": q1, "q3": q3, "min": min(ratios), "max": max(ratios)}
            summary[metric][layout] = spread
        for layout in LAYOUTS:
            percent = statistics.median(shares[layout][metric])
            summary["nf_tables_percent"].setdefault(layout, {})[metric] = percent
    return summary


def report(summary: Json, perf: bool) -> None:
    for metric, label in METRICS.items():
        cells = [f"{label:<16} none {summary[metric]['none_median']:>8.0f}"]
        for layout in LAYOUTS[1:]:
            s = summary[metric][layout]
            cells.append(
                f"{layout} {s['median']:.3f} (IQR {s['q1']:.3f}-{s['q3']:.3f}, "
                f"range {s['min']:.3f}-{s['max']:.3f})"
            )
        print("   ".join(cells))
    for layout in LAYOUTS[1:]:  # a wide IQR means the machine's noise, not the layout, decides
        worst = min(summary[m][layout]["median"] for m in METRICS)
        iqr = max(summary[m][layout]["q3"] - summary[m][layout]["q1"] for m in METRICS)
        verdict = "met" if worst >= 0.98 else "MISSED"
        verdict = f"too noisy to judge (IQR {iqr:.3f} > {NOISY})" if iqr > NOISY else verdict
        print(f"{layout}: lowest median ratio {worst:.3f}, goal >= 0.98: {verdict}")
    if perf:
        percent = summary["nf_tables_percent"]
        cells = [f"{k} " + " ".join(f"{m} {v:.1f}" for m, v in percent[k].items()) for k in percent]
        print(f"% of the benchmark's CPU in nf_tables (perf, median): {'; '.join(cells)}")


OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("--rounds", 15, "rounds, each measuring every layout once"),
    ("--seconds", 3.0, "length of each measurement"),
    ("--connections", 64, "connections wrk keeps open"),
    ("--addresses", 100_000, "single client addresses (hash set)"),
    ("--networks", 100_000, "client /24 networks (interval set)"),
    ("--settle", 0.3, "pause after each switch of layout, s"),
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, default, text in OPTIONS:
        parser.add_argument(flag, type=type(default), default=default, help=f"{text} ({default})")
    parser.add_argument("--client", choices=("addr", "net"), default="addr", help="its set")
    parser.add_argument("--no-offload", action="store_true", help="TSO, GSO, GRO off on veths")
    parser.add_argument("--perf", action="store_true", help="also the CPU share in nf_tables")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if args.rounds < 2 or args.addresses < 100 or (args.client == "net" and args.networks < 1):
        parser.error("at least 2 rounds and 100 addresses; --client net needs networks")
    tools = ["wrk", "iperf3", "nginx", "ethtool"] + (["perf"] if args.perf else [])
    if os.geteuid() != 0 or not all(shutil.which(t) for t in tools):
        print(f"bench: needs root and {', '.join(tools)} (apt-get install {APT})", file=sys.stderr)
        return 2
    nets = base.networks(args.networks)
    source = CLIENT if args.client == "addr" else nets[len(nets) // 2].replace(".0/24", ".7")
    versions = [netns.run(["nft", "--version"]).stdout.strip()]
    versions.append(netns.run(["wrk", "-v"], check=False).stdout.split("[")[0].strip())
    versions.append("iperf3 " + netns.run(["iperf3", "--version"]).stdout.split()[1])
    kind, offloads = ("hash" if source == CLIENT else "interval"), ("on", "off")[args.no_offload]
    print(f"# data path: kernel {os.uname().release}, {', '.join(versions)}")
    print(
        f"# {args.addresses:,} addresses + {args.networks:,} networks; client {source} ({kind} "
        f"set); {args.rounds} rounds of {args.seconds:g} s, order rotated; offloads {offloads}"
    )
    results: Figures = {k: {m: [] for m in METRICS} for k in LAYOUTS}
    shares: Figures = {k: {m: [] for m in METRICS} for k in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="repogate-datapath-") as tmp:
        work = Path(tmp)
        config = base.write_config(work, base.addresses(args.addresses) + nets, "datapath")
        extra = [STRANGER] + ([source] if source != CLIENT else [])
        with gateway(work, source, extra, offload=not args.no_offload) as gw:
            gw.prepare_tables(config)
            for i in range(args.rounds):
                for m, metric in enumerate(METRICS):
                    turn = (i + m) % len(LAYOUTS)  # each layout first in turn
                    for layout in LAYOUTS[turn:] + LAYOUTS[:turn]:
                        value, share = measure(gw, layout, metric, args)
                        results[layout][metric].append(value)
                        shares[layout][metric].append(share)
                last = {k: "/".join(f"{v[-1]:.0f}" for v in results[k].values()) for k in LAYOUTS}
                print(f"  round {i + 1}, crr/up/down: {last}", file=sys.stderr)
    summary = summarise(results, shares)
    report(summary, args.perf)
    if args.json:
        raw = {"args": {**vars(args), "json": str(args.json)}, "raw": results, "summary": summary}
        args.json.write_text(json.dumps({**raw, "nf_tables_percent_raw": shares}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
