"""repogate beside its peers, in one run: `make bench-peers` (root; nothing on the host touched).

Lists: Debian's crowdsec-firewall-bouncer (nftables mode) fed by a stand-in for CrowdSec's
local API (bench/peers_standin.py: `GET /v1/decisions/stream`, X-Api-Key, ban decisions of
scope Ip), repogate's daemon with an http client group polling the same stand-in's list,
and raw `nft -f` as the floor, each in its own namespace. Each takes SIZE addresses (on top
of one already there), then changes of CHANGE (half out, half in), then goes back. Timed
from the data leaving the publisher (or `nft -f` starting) until `nft monitor` in that
namespace saw the transaction after which the set held exactly the new content; the same
monitor counts the transactions that changed the set and those that left it holding
neither the old nor the new content (a mixed state a packet could meet). Times are given
as ratios to the floor measured beside them, interleaved, median of --repeats.

DNS: repogate's `type = "dns"` group against azlux/nft-dns (run from --nft-dns PATH or
$NFT_DNS, a checkout or a bare git dir; skipped, saying so, when absent), N names served
by dnsmasq: start until every name's address is in the set, then how long each takes to
follow 1 % of the names moving. See bench/peers_lists.py and bench/peers_dns.py.

Packages: nftables, dnsmasq-base, crowdsec-firewall-bouncer (Debian; without it that peer
is skipped, saying so), coreutils' stdbuf; nft-dns's dependencies come from PyPI into a
throwaway venv. Nothing here asserts a time: the figures are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench import peers_dns, peers_lists  # noqa: E402
from bench.peers_lab import namespace, spread_addresses  # noqa: E402
from bench.peers_lists import ListPeer, Sample  # noqa: E402

SENTINEL = "192.0.2.1"  # in every list from the start, so no peer ever starts empty
NFT_DNS_HOME = "github:azlux/nft-dns"


def lists(args: argparse.Namespace, work: Path) -> None:
    start = frozenset({SENTINEL})
    full = start | frozenset(spread_addresses(args.size))
    half = args.change // 2
    changed = (full - frozenset(spread_addresses(half))) | frozenset(
        spread_addresses(half, offset=args.size)
    )
    makers: list[tuple[str, Callable[[str, Path, frozenset[str]], ListPeer]]] = [
        ("floor", peers_lists.floor)
    ]
    version = peers_lists.bouncer_version()
    if version is None:
        print(f"# crowdsec-firewall-bouncer: skipped, {peers_lists.BOUNCER} is not installed")
    else:
        print(f"# crowdsec-firewall-bouncer: {version}")
        makers.append(("crowdsec", peers_lists.crowdsec))
    makers.append(("repogate", peers_lists.repogate))
    loads: dict[str, list[Sample]] = {}
    changes: dict[str, list[Sample]] = {}
    with ExitStack() as stack:
        peers = []
        for role, make in makers:
            ns = stack.enter_context(namespace(role))
            (work / role).mkdir()
            peer = make(ns, work / role, start)
            stack.callback(peer.close)
            peers.append(peer)
        for r in range(args.repeats):
            turn = peers[r % len(peers) :] + peers[: r % len(peers)]  # drift hits all alike
            for peer in turn:
                loads.setdefault(peer.name, []).append(peer.change(full))
            for peer in turn:
                changes.setdefault(peer.name, []).append(peer.change(changed))
                changes[peer.name].append(peer.change(full))
            for peer in turn:
                peer.change(start)
    report(f"load {args.size:,}", loads, peers[0].name)
    report(f"change {args.change} ({half} out, {half} in)", changes, peers[0].name)


def median(samples: Sequence[Sample]) -> float:
    return statistics.median(s.seconds for s in samples)


def report(title: str, samples: dict[str, list[Sample]], floor: str) -> None:
    base = median(samples[floor])
    print(f"{title}: time from published to all enforced, as a multiple of raw `nft -f`")
    for name, runs in samples.items():
        mine = median(runs)
        txns = sorted({s.transactions for s in runs})
        mixed = [s.mixed for s in runs]
        states = (
            "never a mixed state"
            if not any(mixed)
            else f"MIXED: up to {max(mixed)} intermediate states per change"
        )
        print(
            f"  {name:<28} {mine / base:7.1f}x  ({mine * 1000:8.1f} ms; "
            f"{'/'.join(map(str, txns))} transaction(s) per change; {states}) "
            f"[median of {len(runs)}]"
        )


def dns(args: argparse.Namespace, work: Path) -> None:
    source = args.nft_dns or os.environ.get("NFT_DNS")
    peer: peers_dns.NftDns | None = None
    if not source:
        print(f"# nft-dns: skipped, no --nft-dns PATH (or $NFT_DNS): get {NFT_DNS_HOME}")
    else:
        try:
            peer = peers_dns.prepare_nft_dns(Path(source), work)
            pins = " ".join(peers_dns.NFT_DNS_PINS)
            print(f"# nft-dns: {peer.origin}; venv with {pins}")
        except (OSError, RuntimeError, ValueError) as exc:
            print(f"# nft-dns: skipped, {exc}")
    print(
        f"# dns: names served by dnsmasq, one A record each, TTL {args.dns_ttl} s; both "
        f"re-ask at expiry (repogate min_refresh 1 s, nft-dns min_ttl 1); a move = 1 % of "
        f"the names (every 100th) to new addresses, timed from dnsmasq's re-read, so up to "
        f"one TTL of it is waiting for the old answer to expire"
    )
    for count in args.dns_sizes:
        results: dict[str, peers_dns.DnsResult] = {}
        with namespace("dnsrg") as ns:
            (work / f"rg{count}").mkdir()
            results["repogate"] = peers_dns.repogate_dns(
                ns, work / f"rg{count}", count, args.dns_ttl
            )
        if peer is not None:
            with namespace("nftdns") as ns:
                (work / f"nd{count}").mkdir()
                results["nft-dns"] = peers_dns.nft_dns(
                    ns, work / f"nd{count}", count, peer, args.dns_ttl
                )
        for name, res in results.items():
            if res.follow_s is None:
                follow = f"followed the move of {res.changed}: {res.note}"
            else:
                mixed = (
                    f"MIXED: {res.follow_mixed} of them left a mix"
                    if res.follow_mixed
                    else "never a mixed state"
                )
                follow = (
                    f"followed the move of {res.changed} in {res.follow_s:.1f} s "
                    f"({res.follow_transactions} transaction(s), {mixed})"
                )
            print(
                f"  {count:>6,} names, {name:<8}: start to all in the set {res.start_s:7.2f} s "
                f"({res.start_transactions:,} transaction(s)); {follow}"
            )
        if "nft-dns" in results:
            ours, theirs = results["repogate"], results["nft-dns"]
            line = (
                f"  {count:>6,} names, repogate/nft-dns: start {ours.start_s / theirs.start_s:.3f}"
            )
            if ours.follow_s is not None and theirs.follow_s is not None:
                line += f", follow {ours.follow_s / theirs.follow_s:.2f}"
            else:
                line += ", follow: no ratio (one of them did not follow)"
            print(line)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--change", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dns-sizes", default="1000,10000")
    parser.add_argument("--dns-ttl", type=int, default=peers_dns.TTL)
    parser.add_argument("--nft-dns", help="nft-dns checkout or bare git dir (or $NFT_DNS)")
    parser.add_argument("--only", choices=("lists", "dns"), help="run one half")
    args = parser.parse_args(argv)
    args.dns_sizes = [int(size) for size in args.dns_sizes.split(",") if size]
    if os.geteuid() != 0:
        print("bench/peers.py: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    for tool in ("nft", "ip", "stdbuf", "dnsmasq"):
        if shutil.which(tool) is None:
            print(f"bench/peers.py: {tool} is not installed", file=sys.stderr)
            return 2
    print(
        f"# peers, side by side; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at "
        f"start. Judge: `nft monitor` in each peer's namespace (text mode, whose "
        f"`# new generation` line ends each transaction)"
    )
    with tempfile.TemporaryDirectory(prefix="repogate-peers-") as tmp:
        if args.only in (None, "lists"):
            lists(args, Path(tmp))
        if args.only in (None, "dns"):
            dns(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
