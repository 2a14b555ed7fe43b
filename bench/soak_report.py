"""The soak's figures, verdict, markdown block and JSON summary, from what soak.py gathered.

Memory is judged on the highest RSS sample in the minute ending at the warm-up
and in the last minute, so both windows span a whole churn cycle (a file change
and a DNS change). Descriptors and threads are judged on the lowest sample in
the same windows: a DNS batch holds up to a few hundred sockets for a moment and
a scrape a thread, and a sample landing on one says nothing, while a leak raises
the floor. One growth is by design: the scheduler's thread pool starts a worker
only when refresh jobs overlap, at most one per source (jobs never run twice at
once), so threads may end up to that many above their count at READY.
Reconcile percentiles come from the daemon's histogram between the scrape at
the warm-up and the last one (interpolated within buckets, as Prometheus'
histogram_quantile does), beside the exact times of the transactions the daemon
logged.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.soak_daemon import ProcSample, Scrape
from bench.soak_load import SetCheck

RSS_GOAL = 0.10
HISTOGRAM = "repogate_reconcile_duration_seconds"
LE = re.compile(rf'^{HISTOGRAM}_bucket\{{le="([^"]+)"\}}$')


@dataclass
class Gathered:
    """Everything soak.py collected; the report only reads it."""

    minutes: float
    warmup_s: float
    churn: dict[str, Any]
    samples: list[ProcSample]
    scrapes: list[Scrape]
    transactions_ms: list[tuple[float, float]]  # (seconds since READY, ms)
    complaints: list[str]
    checks: list[SetCheck]
    converged_s: float | None  # end of the run until the sets were read; None: timed out
    stop_s: float
    stop_code: int | None
    ready_s: float
    refresh_jobs: int  # the scheduler's pool grows to at most this many workers
    notes: list[str] = field(default_factory=list)


def window(samples: Sequence[ProcSample], end: float, length: float) -> list[ProcSample]:
    chosen = [s for s in samples if end - length <= s.t <= end]
    return chosen or [min(samples, key=lambda s: abs(s.t - end))]


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of all at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def buckets(series: dict[str, float]) -> list[tuple[float, float]]:
    found = [(float(m.group(1)), v) for k, v in series.items() if (m := LE.match(k))]
    return sorted(found)


def histogram_quantile(q: float, before: dict[str, float], after: dict[str, float]) -> float:
    """Prometheus' histogram_quantile over the observations between two scrapes."""
    old = dict(buckets(before))
    cumulative = [(le, count - old.get(le, 0.0)) for le, count in buckets(after)]
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def per_minute_cpu(samples: Sequence[ProcSample], minutes: float) -> list[float]:
    """CPU seconds the daemon used in each whole minute of the run."""
    marks = [min(samples, key=lambda s: abs(s.t - 60 * m)) for m in range(int(minutes) + 1)]
    return [b.cpu_s - a.cpu_s for a, b in itertools.pairwise(marks)]


def summarise(g: Gathered) -> dict[str, Any]:
    end = g.minutes * 60
    span = min(60.0, g.warmup_s)
    warm, last = window(g.samples, g.warmup_s, span), window(g.samples, end, span)
    rss_warm, rss_end = max(s.rss_kb for s in warm), max(s.rss_kb for s in last)
    growth = (rss_end - rss_warm) / rss_warm
    start = g.samples[0]
    fds = {"start": start.fds, "warm_min": min(s.fds for s in warm)}
    fds |= {"end_min": min(s.fds for s in last), "max": max(s.fds for s in g.samples)}
    threads = {"start": start.threads, "warm_min": min(s.threads for s in warm)}
    threads |= {"end_min": min(s.threads for s in last), "max": max(s.threads for s in g.samples)}
    first = next(s for s in g.scrapes if s.t >= g.warmup_s - 1)
    final = g.scrapes[-1]
    reconciles = final.series.get(f"{HISTOGRAM}_count", 0.0) - first.series.get(
        f"{HISTOGRAM}_count", 0.0
    )
    reconcile = {
        "count": reconciles,
        "p50_s": histogram_quantile(0.5, first.series, final.series),
        "p99_s": histogram_quantile(0.99, first.series, final.series),
        "whole_run_p50_s": histogram_quantile(0.5, {}, final.series),
        "whole_run_p99_s": histogram_quantile(0.99, {}, final.series),
        "failed_total": final.series.get('repogate_reconciles_total{result="failed"}', 0.0),
    }
    steady = [ms for t, ms in g.transactions_ms if g.warmup_s <= t <= end]
    transactions: dict[str, float] = {"count": len(steady)}
    if steady:
        transactions |= {"p50_ms": quantile(steady, 0.5), "p99_ms": quantile(steady, 0.99)}
    cpu = per_minute_cpu(g.samples, g.minutes)
    after = cpu[math.ceil(g.warmup_s / 60) :] or cpu
    scrape_s = [s.seconds for s in g.scrapes]
    return {
        "minutes": g.minutes,
        "warmup_s": g.warmup_s,
        "ready_s": g.ready_s,
        "refresh_jobs": g.refresh_jobs,
        "churn": g.churn,
        "rss_kb": {"ready": start.rss_kb, "warm": rss_warm, "end": rss_end},
        "rss_growth": growth,
        "rss_peak_kb": max(s.rss_kb for s in g.samples),
        "fds": fds,
        "threads": threads,
        "reconcile": reconcile,
        "transactions": transactions,
        "cpu_s_per_minute": cpu,
        "cpu_s_per_minute_after_warmup": {
            "median": statistics.median(after),
            "max": max(after),
            # The mean is the figure: a DNS batch (~3 CPU s) straddling a minute's edge
            # makes single minutes uneven.
            "mean": statistics.fmean(after),
        },
        "scrapes": {
            "count": len(scrape_s),
            "p50_s": statistics.median(scrape_s),
            "max_s": max(scrape_s),
        },
        "sets": [asdict(c) for c in g.checks],
        "converged_s": g.converged_s,
        "stop": {"seconds": g.stop_s, "exit": g.stop_code},
        "complaints": g.complaints[:50],
        "complaint_count": len(g.complaints),
        "notes": g.notes,
        "series": [asdict(s) for s in g.samples[::5]],  # every 5 s
    }


def failures(summary: dict[str, Any], checks: Sequence[SetCheck]) -> list[str]:
    """What makes the soak fail, each in a sentence."""
    found = []
    if summary["rss_growth"] > RSS_GOAL:
        found.append(f"RSS grew {summary['rss_growth'] * 100:.1f} % after warm-up (goal <= 10 %)")
    fds, threads = summary["fds"], summary["threads"]
    if fds["end_min"] > fds["warm_min"]:
        found.append(f"descriptors: {fds['warm_min']} at warm-up, {fds['end_min']} at the end")
    allowed = max(threads["warm_min"], threads["start"] + summary["refresh_jobs"])
    if threads["end_min"] > allowed:
        found.append(
            f"threads: {threads['start']} at READY, {threads['warm_min']} at warm-up, "
            f"{threads['end_min']} at the end (the refresh pool allows {allowed})"
        )
    for check in checks:
        if not check.ok:
            found.append(
                f"set {check.name}: {check.missing_count} missing (e.g. {check.missing}), "
                f"{check.extra_count} unexpected (e.g. {check.extra})"
            )
    if summary["converged_s"] is None:
        found.append("the sources did not refresh after the last churn in time")
    if summary["reconcile"]["failed_total"]:
        found.append(f"{summary['reconcile']['failed_total']:.0f} reconciles failed")
    if summary["stop"]["exit"] != 0:
        found.append(f"SIGTERM: exit {summary['stop']['exit']} (None: did not stop in 60 s)")
    return found


def markdown(summary: dict[str, Any], command: str) -> str:
    """A block for docs/benchmarks.md."""
    rss, fds, threads = summary["rss_kb"], summary["fds"], summary["threads"]
    rec, tx = summary["reconcile"], summary["transactions"]
    cpu = summary["cpu_s_per_minute_after_warmup"]
    churn = summary["churn"]
    identical = all(s["missing_count"] + s["extra_count"] == 0 for s in summary["sets"])
    sets = ", ".join(
        f"{s['name']} {s['found']:,}" + ("" if s["missing_count"] + s["extra_count"] == 0 else " ✗")
        for s in summary["sets"]
        if s["expected"] or s["found"]
    )
    empty = sum(1 for s in summary["sets"] if not s["expected"] and not s["found"])
    sets += f"; {empty} other client sets empty"
    tx_text = (
        f"{tx['p50_ms']:.0f} ms / {tx['p99_ms']:.0f} ms ({tx['count']} logged)"
        if tx["count"]
        else "none logged"
    )
    rows = [
        (
            "RSS at READY, after warm-up, at the end",
            f"{rss['ready'] / 1024:.0f} / {rss['warm'] / 1024:.0f} / {rss['end'] / 1024:.0f} MB "
            f"({summary['rss_growth'] * 100:+.1f} %)",
            "≤ +10 %",
        ),
        (
            "open descriptors at READY, warm-up, end (floor)",
            f"{fds['start']} / {fds['warm_min']} / {fds['end_min']} (peak {fds['max']})",
            "no growth",
        ),
        (
            "threads at READY, warm-up, end (floor)",
            f"{threads['start']} / {threads['warm_min']} / {threads['end_min']} "
            f"(peak {threads['max']})",
            "no growth",
        ),
        (
            "reconcile p50 / p99 after warm-up (histogram)",
            f"{rec['p50_s'] * 1000:.0f} ms / {rec['p99_s'] * 1000:.0f} ms "
            f"({rec['count']:.0f} reconciles, {rec['failed_total']:.0f} failed)",
            "",
        ),
        ("transaction p50 / p99 after warm-up (log)", tx_text, ""),
        (
            "CPU seconds per minute after warm-up: mean (busiest minute)",
            f"{cpu['mean']:.1f} s ({cpu['max']:.1f} s) = {cpu['mean'] / 60 * 100:.1f} % of a core",
            "",
        ),
        ("warnings and errors the daemon logged", f"{summary['complaint_count']}", ""),
        (
            "one metrics scrape: median (max)",
            f"{summary['scrapes']['p50_s'] * 1000:.0f} ms "
            f"({summary['scrapes']['max_s'] * 1000:.0f} ms)",
            "",
        ),
        ("final sets (`nft -j`, once)", sets, "identical" if identical else "DIFFER"),
        (
            "stop on SIGTERM",
            f"{summary['stop']['seconds']:.2f} s, exit {summary['stop']['exit']}",
            "exit 0",
        ),
    ]
    lines = [
        f"Soak: `{command}`, {summary['minutes']:g} min of `repogate run` "
        f"(warm-up {summary['warmup_s'] / 60:.1f} min): {churn['clients']:,} client addresses and "
        f"{churn['networks']:,} networks in a file group polled every 10 s, "
        f"{churn['names']:,} DDNS names from dnsmasq (TTL {churn['ttl']} s); "
        f"{churn['share'] * 100:g} % of each replaced every minute; metrics scraped every "
        f"{churn['scrape_every']:g} s.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
    ]
    return "\n".join(lines)
