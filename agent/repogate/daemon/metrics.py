"""Every metric repogate exports, in one place, and the endpoint that serves them.

Label values stay bounded: sets, groups, sources and destinations come from the
config, never one per client address. Traffic counters are read from the owned
table's named counters when Prometheus scrapes, so they are the kernel's own.
Gauges the daemon replaces as a whole (set and group sizes, egress addresses,
holds, destination sizes) are plain dicts exported at scrape time by a collector
of our own: prometheus-client has no public way to list a gauge's series, and
reading its private attributes would break on some release.

The endpoint is a small WSGI server of our own around prometheus-client's
exposition, so TLS and basic auth work the same on Debian's prometheus-client
0.16 and on PyPI's current release.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from repogate import __version__
from repogate.egress import EgressReport
from repogate.errors import RepogateError
from repogate.live import OK, InventoryView
from repogate.model import CounterValue
from repogate.probes import ProbeResult

log = logging.getLogger(__name__)
VERDICTS = ("allowed", "denied")
DNS_OUTCOMES = ("ok", "nodata", "nxdomain", "servfail", "refused", "timeout", "error")
DESTINATION_ADDRESSES = "repogate_destination_addresses"
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The daemon's instruments. A fresh registry per instance (tests make many)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._replaced = _ReplacedGauges(
            [
                _Family(
                    "repogate_set_elements", "Elements in each set of the owned table.", ("set",)
                ),
                _Family(
                    "repogate_group_entries", "Entries enforced for each client group.", ("group",)
                ),
                _Family(
                    DESTINATION_ADDRESSES,
                    "Addresses and networks in each destination's sets (both families); "
                    "0: the destination gates nothing.",
                    ("destination",),
                ),
                _Family(
                    "repogate_shrink_held",
                    "1 while a refresh that shrank more than max_shrink is held back.",
                    ("source",),
                ),
                _Family(
                    "repogate_devices",
                    "Devices each device group sees, by state (admitted, non-compliant, "
                    "unknown, contested); no per-device labels.",
                    ("group", "state"),
                ),
                _Family(
                    "repogate_inventory_last_success_timestamp_seconds",
                    "When each device inventory was last read successfully.",
                    ("inventory",),
                ),
                _Family(
                    "repogate_inventory_up",
                    "1 while each device inventory's last read succeeded; 0 while it fails "
                    "(its last good records are kept until max_stale).",
                    ("inventory", "type"),
                ),
                _Family(
                    "repogate_inventory_records",
                    "Device records in each inventory as last read, by whether they qualify "
                    "now (compliant and fresh).",
                    ("inventory", "qualifies"),
                ),
                _Family(
                    "repogate_probe_success",
                    "1 when the probe's last run passed, 0 when it failed (repogate probe "
                    "NAME says why).",
                    ("probe", "type"),
                ),
                _Family(
                    "repogate_probe_duration_seconds",
                    "How long the probe's last run took.",
                    ("probe", "type"),
                ),
                _Family(
                    "repogate_egress_address_info",
                    "The addresses of the egress interfaces (agent.egress_interfaces).",
                    ("interface", "address"),
                ),
                _Family(
                    "repogate_egress_address_present",
                    "1 while each declared egress address (egress.addresses) is on an "
                    "interface of this host; 0: it is gone.",
                    ("address",),
                ),
                _Family(
                    "repogate_egress_source_declared",
                    "The source address traffic to Bitbucket leaves from, per family: 1 when "
                    "it is in egress.addresses (or none are declared), 0 when Bitbucket's "
                    "allowlist does not hold it.",
                    ("family", "source", "interface"),
                ),
            ]
        )
        r.register(self._replaced)
        self.source_up = Gauge(
            "repogate_source_up",
            "1 if the source's last refresh succeeded.",
            ["source"],
            registry=r,
        )
        self.source_last_success = Gauge(
            "repogate_source_last_success_timestamp_seconds",
            "When the source last refreshed successfully.",
            ["source"],
            registry=r,
        )
        self.source_stale = Gauge(
            "repogate_source_stale",
            "1 while the source is failing and its last known good entries are served.",
            ["source"],
            registry=r,
        )
        self.source_rejected = Counter(
            "repogate_source_rejected_entries",
            "Entries a source delivered that were rejected (not an address, too broad).",
            ["source"],
            registry=r,
        )
        self.source_refresh_duration = Histogram(
            "repogate_source_refresh_duration_seconds",
            "Time to refresh a source.",
            ["source"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "repogate_reconcile_duration_seconds",
            "Time to compute and apply one reconcile.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.reconciles = Counter(
            "repogate_reconciles", "Reconciles by result.", ["result"], registry=r
        )
        self.set_changes = Counter(
            "repogate_set_changes",
            "Elements added to or deleted from each set.",
            ["set", "op"],
            registry=r,
        )
        self.dns_queries = Counter(
            "repogate_dns_queries", "DNS lookups by outcome.", ["result"], registry=r
        )
        self.drift_repairs = Counter(
            "repogate_drift_repairs", "Repairs of the owned table changed by others.", registry=r
        )
        self.config_reloads = Counter(
            "repogate_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.reload_ok = Gauge(
            "repogate_config_last_reload_successful",
            "1 if the last config reload (or the start) succeeded.",
            registry=r,
        )
        self.reload_ok.set(1)
        self.state_saved = Gauge(
            "repogate_state_saved",
            "1 while the state file (last known good entries) saves; 0: they live in memory "
            "only, and a restart would start without them (status says why).",
            registry=r,
        )
        build = Gauge("repogate_build_info", "repogate's version.", ["version"], registry=r)
        build.labels(version=__version__).set(1)
        # Present from the start at 0, so rate() and increase() see the first event.
        for result in ("ok", "failed"):
            self.reconciles.labels(result=result)
            self.config_reloads.labels(result=result)
        for outcome in DNS_OUTCOMES:
            self.dns_queries.labels(result=outcome)

    def wsgi_app(self) -> Callable[..., Any]:
        """The WSGI app serving these metrics (the listener is daemon.metrics_server)."""
        app: Callable[..., Any] = make_wsgi_app(self.registry)
        return app

    def known_sets(self, names: Iterable[str]) -> None:
        """Create the change counters of every set at 0."""
        for name in names:
            for op in ("add", "delete"):
                self.set_changes.labels(set=name, op=op)

    def known_sources(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.source_rejected.labels(source=key)

    def watch_state_saves(self, saved: Callable[[], bool]) -> None:
        """Read at scrape time: whether the last save of the state file succeeded."""
        self.state_saved.set_function(lambda: float(saved()))

    def watch_traffic(self, read: Callable[[], Mapping[str, CounterValue]]) -> None:
        """Export the table's named counters, read at each scrape through `read`."""
        self.registry.register(_TrafficCollector(read))

    def set_sizes(self, sizes: Mapping[str, int]) -> None:
        self._replaced.replace("repogate_set_elements", [((n,), v) for n, v in sizes.items()])

    def group_sizes(self, sizes: Mapping[str, int]) -> None:
        self._replaced.replace("repogate_group_entries", [((n,), v) for n, v in sizes.items()])

    def destination_sizes(self, sizes: Mapping[str, int]) -> None:
        """Addresses and networks per destination, both families: 0 means NOT GATED."""
        self._replaced.replace(DESTINATION_ADDRESSES, [((n,), v) for n, v in sizes.items()])

    def devices(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Devices per (group, state), from the device groups' last verdicts."""
        self._replaced.replace("repogate_devices", counts.items())

    def inventories(self, views: Iterable[InventoryView]) -> None:
        """Each inventory's freshness, health and records."""
        views = list(views)
        read = [((v.name,), v.last_success) for v in views if v.last_success is not None]
        self._replaced.replace("repogate_inventory_last_success_timestamp_seconds", read)
        up = [((v.name, v.type), v.state == OK) for v in views]
        self._replaced.replace("repogate_inventory_up", up)
        records = [((v.name, "true"), v.compliant) for v in views]
        records += [((v.name, "false"), v.records - v.compliant) for v in views]
        self._replaced.replace("repogate_inventory_records", records)

    def egress(
        self, addresses: Iterable[tuple[str, str]], report: EgressReport | None = None
    ) -> None:
        self._replaced.replace("repogate_egress_address_info", [(a, 1) for a in addresses])
        if report is None:
            return
        present = [((a,), bool(interface)) for a, interface in report.declared.items()]
        self._replaced.replace("repogate_egress_address_present", present)
        sources = [
            ((f"ipv{p.family}", p.source, p.interface), p.declared is not False)
            for p in report.paths
        ]
        self._replaced.replace("repogate_egress_source_declared", sources)

    def probes(self, results: Iterable[ProbeResult], configured: Iterable[str]) -> None:
        """The probes' last results (a configured probe not run yet has no series)."""
        keep = set(configured)
        done = [r for r in results if r.name in keep]
        success = [((r.name, r.type), r.ok) for r in done]
        self._replaced.replace("repogate_probe_success", success)
        duration = [((r.name, r.type), r.seconds) for r in done]
        self._replaced.replace("repogate_probe_duration_seconds", duration)

    def holds(self, sources: Iterable[str], held: Iterable[str]) -> None:
        held_set = set(held)
        self._replaced.replace("repogate_shrink_held", [((s,), s in held_set) for s in sources])

    def forget_sources(self, keep: set[str]) -> None:
        """Drop the series of sources no longer configured."""
        for gauge in (self.source_up, self.source_last_success, self.source_stale):
            for source in _sources_of(gauge) - keep:
                # Gone already if another thread removed it (0.16 raises KeyError then).
                with contextlib.suppress(KeyError):
                    gauge.remove(source)


def _sources_of(gauge: Gauge) -> set[str]:
    """The `source` label values a gauge has series for, through its public collect()."""
    return {
        sample.labels["source"]
        for family in gauge.collect()
        for sample in family.samples
        if "source" in sample.labels
    }


@dataclass
class _Family:
    """One gauge the daemon replaces as a whole: its series, by label values."""

    name: str
    help: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def export(self, with_samples: bool) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.help, labels=list(self.labels))
        if with_samples:
            for labels, value in sorted(self.values.items()):
                family.add_metric(list(labels), value)
        return family


class _ReplacedGauges:
    """Gauges set whole by the daemon, exported at scrape time (a custom collector)."""

    def __init__(self, families: Iterable[_Family]) -> None:
        self._families = {family.name: family for family in families}
        self._lock = threading.Lock()  # scrapes run in the metrics server's threads

    def replace(self, name: str, series: Iterable[tuple[tuple[str, ...], float]]) -> None:
        """Set a gauge to exactly these series (label values, value); others vanish."""
        values = {labels: float(value) for labels, value in series}
        with self._lock:
            self._families[name].values = values

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            exported = [family.export(with_samples=True) for family in self._families.values()]
        yield from exported

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # The names, so the registry refuses a second metric of the same name.
        for family in self._families.values():
            yield family.export(with_samples=False)


class _TrafficCollector:
    def __init__(self, read: Callable[[], Mapping[str, CounterValue]]) -> None:
        self._read = read

    def collect(self) -> Iterable[CounterMetricFamily]:
        packets = CounterMetricFamily(
            "repogate_packets",
            "Packets to protected destinations, by verdict (the table's named counters).",
            labels=["destination", "verdict"],
        )
        octets = CounterMetricFamily(
            "repogate_bytes",
            "Bytes to protected destinations, by verdict (the table's named counters).",
            labels=["destination", "verdict"],
        )
        try:
            counters = self._read()
        except RepogateError as exc:  # a scrape must not fail because the table is gone
            log.warning("cannot read traffic counters: %s", exc)
            counters = {}
        for name, value in sorted(counters.items()):
            verdict, _, destination = name.partition("_")
            if verdict in VERDICTS and destination:
                packets.add_metric([destination, verdict], value.packets)
                octets.add_metric([destination, verdict], value.bytes)
        yield packets
        yield octets

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []  # unchecked: families are built at each scrape


# -- the endpoint -----------------------------------------------------------------------
