"""End to end: a real Prometheus scrapes repogate in the lab, and the dashboard gets its data.

Prometheus (`lab.prometheus`) runs inside the lab's gateway namespace, where the agent's
metrics listener is on 127.0.0.1, with the shipped rules loaded, scraping and evaluating every
second; tests read it through its HTTP API, as Grafana would. It has two targets in the job
`repogate`, as in the example scrape config:

  * a stand-in exporter (this module, run as `python -m tests.e2e.test_prometheus`) serving
    every metric of docs/observability.md with made-up, moving values: the dashboard and the
    rules are checked against the documented contract whatever the agent serves today;
  * `repogate run` itself with `[metrics] listen`, while clients connect through the gateway,
    allowed and refused: every dashboard query must have data from the real agent too.

Each dashboard query runs with Grafana's variables replaced as Grafana would ($instance as an
escaped regex, one instance at a time). Prometheus hands its first targets to the scrapers
only about 5 s after it starts (service discovery's update throttle), so one server serves
the whole module.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab import netns
from lab.config import office_group
from lab.dns import DnsServer
from lab.prometheus import (
    DashboardQuery,
    Prometheus,
    Sample,
    ScrapeTarget,
    dashboard_queries,
    expand_variables,
    find_prometheus,
    pick_ports,
    start_prometheus,
)
from lab.spec import GATEWAY
from lab.sshd import start_sshd
from lab.topology import Lab, TargetRef
from repogate import __version__

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "config" / "prometheus" / "repogate.rules.yml"
DASHBOARD = REPO / "config" / "grafana" / "repogate.json"
DOCS = REPO / "docs" / "observability.md"
JOB = "repogate"
# $__rate_interval and $__range: Grafana's own for a 1 s scrape is 4 s. The agent's is wider,
# so that rates still cover its start-up reconciles when the queries run seconds later.
STAND_IN_WINDOW = "5s"
AGENT_WINDOW = "1m"
SCRAPES_BEFORE_QUERYING = 4
STAND_IN_VERSION = "0.0.0-stand-in"
PROTECTED_SSH: list[TargetRef] = [("bitbucket", 22)]
BOB = "10.30.0.7"
OFFICE_WITHOUT_BOB = ["10.20.0.0/16", "2001:db8:20::/48"]
DNS_ADDRESS = "203.0.113.10"  # the `other` namespace, reachable from the gateway
HOME_NAME = "home.lab.test"
DNS_HOSTS: dict[str, tuple[str, ...]] = {
    HOME_NAME: ("10.40.0.7",),
    "bitbucket.lab.test": ("198.51.100.10",),
}
# Variables a test run might inherit that would change how the daemon behaves.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS")

T = TypeVar("T")


# -- the stand-in exporter (program half, runs in the gateway) --------------------------------

SOURCES = ("office", "laptops", "home", "destination:bitbucket:hosts", "destination:bitbucket:feed")
FAILING = "laptops"
SETS = (
    "client_office_v4_net",
    "client_office_v6_net",
    "client_laptops_v4_addr",
    "dest_bitbucket_v4",
)
DNS_RATES = {
    "ok": 2,
    "nodata": 0.5,
    "nxdomain": 0.2,
    "servfail": 0.1,
    "refused": 0,
    "timeout": 0.1,
    "error": 0,
}
BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0)

Samples = list[tuple[dict[str, str], float]]


def _family(name: str, kind: str, samples: Samples) -> list[str]:
    lines = [f"# HELP {name} stand-in for tests", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{name}{{{inner}}} {value:.15g}" if inner else f"{name} {value:.15g}")
    return lines


def _histogram(count: float, mean: float, labels: dict[str, str]) -> dict[str, Samples]:
    """_bucket, _sum and _count samples of `count` observations averaging `mean` seconds."""
    count = math.floor(count)
    buckets = [
        ({**labels, "le": str(le)}, math.floor(count * min(1.0, (i + 1) / (len(BUCKETS) - 1))))
        for i, le in enumerate(BUCKETS)
    ]
    return {
        "_bucket": [*buckets, ({**labels, "le": "+Inf"}, count)],
        "_sum": [(labels, count * mean)],
        "_count": [(labels, count)],
    }


def _histogram_family(name: str, parts: list[dict[str, Samples]]) -> list[str]:
    lines = [f"# HELP {name} stand-in for tests", f"# TYPE {name} histogram"]
    for suffix in ("_bucket", "_sum", "_count"):
        samples = [sample for part in parts for sample in part[suffix]]
        lines += _family(name + suffix, "", samples)[2:]
    return lines


def stand_in_metrics(elapsed: float, now: float) -> str:
    """The documented metrics with plausible values; counters grow with `elapsed` seconds.

    Source `laptops` is failing: stale, its last success 13 hours ago, and a shrunk list held
    back, so RepogateSourceStale (both severities) and RepogateShrinkHeld go pending; nothing
    else may alert.
    """
    t = elapsed

    def per_source(failing: float, others: float) -> Samples:
        return [({"source": s}, failing if s == FAILING else others) for s in SOURCES]

    def traffic(allowed: float, denied: float) -> Samples:
        return [
            ({"destination": "bitbucket", "verdict": "allowed"}, allowed),
            ({"destination": "bitbucket", "verdict": "denied"}, denied),
        ]

    lines = [
        *_family("repogate_build_info", "gauge", [({"version": STAND_IN_VERSION}, 1)]),
        *_family("repogate_packets_total", "counter", traffic(1000 + 40 * t, 20 + 3 * t)),
        *_family("repogate_bytes_total", "counter", traffic(9e5 + 5e4 * t, 1200 + 180 * t)),
        *_family(
            "repogate_set_elements",
            "gauge",
            [({"set": name}, size) for name, size in zip(SETS, (1, 1, 2, 1), strict=True)],
        ),
        *_family(
            "repogate_group_entries",
            "gauge",
            [({"group": g}, n) for g, n in (("office", 2), ("laptops", 2), ("home", 1))],
        ),
        *_family("repogate_destination_addresses", "gauge", [({"destination": "bitbucket"}, 7)]),
        *_family(
            "repogate_inventory_last_success_timestamp_seconds",
            "gauge",
            [({"inventory": "it"}, now - 30)],
        ),
        *_family("repogate_inventory_up", "gauge", [({"inventory": "it", "type": "file"}, 1)]),
        *_family("repogate_probe_success", "gauge", [({"probe": "ssh", "type": "ssh"}, 1)]),
        *_family(
            "repogate_probe_duration_seconds", "gauge", [({"probe": "ssh", "type": "ssh"}, 0.3)]
        ),
        *_family("repogate_egress_address_present", "gauge", [({"address": "203.0.113.7"}, 1)]),
        *_family(
            "repogate_egress_source_declared",
            "gauge",
            [({"family": "ipv4", "source": "203.0.113.7", "interface": "eth0"}, 1)],
        ),
        *_family(
            "repogate_inventory_records",
            "gauge",
            [({"inventory": "it", "qualifies": q}, n) for q, n in (("true", 40), ("false", 3))],
        ),
        *_family(
            "repogate_devices",
            "gauge",
            [({"group": "lan", "state": s}, n) for s, n in (("admitted", 3), ("unknown", 1))],
        ),
        *_family("repogate_source_up", "gauge", per_source(0, 1)),
        *_family(
            "repogate_source_last_success_timestamp_seconds",
            "gauge",
            per_source(now - 13 * 3600, now - 20),
        ),
        *_family("repogate_source_stale", "gauge", per_source(1, 0)),
        *_family(
            "repogate_source_rejected_entries_total", "counter", per_source(math.floor(t / 2), 0)
        ),
        *_histogram_family(
            "repogate_source_refresh_duration_seconds",
            [_histogram(5 + t, 0.02, {"source": s}) for s in SOURCES],
        ),
        *_histogram_family(
            "repogate_reconcile_duration_seconds", [_histogram(3 + t / 2, 0.004, {})]
        ),
        *_family(
            "repogate_reconciles_total",
            "counter",
            [({"result": "ok"}, 3 + math.floor(t / 2)), ({"result": "failed"}, math.floor(t / 10))],
        ),
        *_family(
            "repogate_set_changes_total",
            "counter",
            [
                ({"set": s, "op": op}, math.floor(t / 3) + 1)
                for s in SETS
                for op in ("add", "delete")
            ],
        ),
        *_family(
            "repogate_dns_queries_total",
            "counter",
            [({"result": r}, math.floor(t * rate)) for r, rate in DNS_RATES.items()],
        ),
        *_family("repogate_shrink_held", "gauge", per_source(1, 0)),
        # A repair and a refused reload long ago, and reloads now: no alert of their own.
        *_family("repogate_drift_repairs_total", "counter", [({}, 1)]),
        *_family(
            "repogate_config_reloads_total",
            "counter",
            [({"result": "ok"}, math.floor(t / 4)), ({"result": "failed"}, 1)],
        ),
        *_family("repogate_config_last_reload_successful", "gauge", [({}, 1)]),
        *_family("repogate_state_saved", "gauge", [({}, 1)]),
        *_family(
            "repogate_egress_address_info",
            "gauge",
            [
                ({"interface": "eth0", "address": "192.0.2.10"}, 1),
                ({"interface": "eth0", "address": "2001:db8:1::10"}, 1),
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def serve_stand_in(address: str) -> None:
    """Serve `stand_in_metrics` on host:port at /metrics; print `ready` once listening."""
    host, _, port = address.rpartition(":")
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = stand_in_metrics(time.monotonic() - started, time.time()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with ThreadingHTTPServer((host, int(port)), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.e2e.test_prometheus --listen 127.0.0.1:PORT`: run the stand-in."""
    parser = argparse.ArgumentParser(description="stand-in repogate metrics exporter")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve_stand_in(args.listen)
    return 0


# -- host half: the module's Prometheus, the stand-in, the queries ------------------------------


@dataclass
class Observed:
    """The module's Prometheus in the gateway and the addresses of its two targets."""

    prom: Prometheus
    stand_in: str  # host:port, also its `instance` label
    agent: str  # where `repogate run` is told to listen

    def variables(self, instance: str, window: str) -> dict[str, str]:
        """Grafana's variables for one selected instance, formatted as Grafana does."""
        # A multi-value variable in a regex matcher is regex-escaped, then escaped once more
        # for the PromQL string literal: 127.0.0.1 becomes 127\\.0\\.0\\.1 in the query.
        escaped = re.escape(instance).replace("\\", "\\\\")
        return {
            "job": JOB,
            "instance": escaped,
            "__rate_interval": window,
            "__range": window,
            "__interval": "1s",
            "datasource": "prometheus",
        }


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from the table under `## Metrics` in docs/observability.md."""
    section = DOCS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    cells = [[c.strip().strip("`") for c in row.strip("|").split("|")] for row in rows]
    return {row[0]: row[1] for row in cells if row[0].startswith("repogate_")}


def series_names(documented: Mapping[str, str]) -> set[str]:
    """The series names a scrape shows for the documented metrics (histograms: three)."""
    names = set()
    for name, kind in documented.items():
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        names |= {name + suffix for suffix in suffixes}
    return names


def start_stand_in(lab: Lab, address: str, log_path: Path) -> subprocess.Popen[str]:
    """Run the stand-in exporter in the gateway and wait for its `ready`."""
    argv = [*lab.python_argv(GATEWAY), "-m", "tests.e2e.test_prometheus", "--listen", address]
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=lab.env(),
            start_new_session=True,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15.0)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        stop_process(proc)
        pytest.fail(f"stand-in exporter did not start: {line!r}\n{log_path.read_text()}")
    return proc


def stop_process(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def poll(what: str, probe: Callable[[], T | None], timeout: float, context: Callable[[], str]) -> T:
    """Call `probe` until it returns something; fail with `context()` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout:g}s\n{context()}")
        time.sleep(0.25)


def run_dashboard(
    observed: Observed, instance: str, window: str
) -> dict[DashboardQuery, list[Sample]]:
    """Every panel query of the dashboard for one instance, evaluated at one instant."""
    queries = [q for q in dashboard_queries(load_dashboard()) if q.kind == "panel"]
    variables = observed.variables(instance, window)
    exprs = [expand_variables(q.expr, variables) for q in queries]
    return dict(zip(queries, observed.prom.query_many(exprs), strict=True))


def rule_problems(prom: Prometheus) -> list[str]:
    """Rules that failed to evaluate (a vector-matching error shows only on real data)."""
    return [
        f"{rule['name']}: {rule.get('health')} {rule.get('lastError', '')}"
        for rule in prom.rules()
        if rule.get("health") != "ok"
    ]


def active_alerts(prom: Prometheus, instance: str) -> set[tuple[str, str, str]]:
    """(alertname, severity, source) of every pending or firing alert of one instance."""
    data: dict[str, Any] = prom.api(["/api/v1/alerts"])[0]
    return {
        (a["labels"]["alertname"], a["labels"]["severity"], a["labels"].get("source", ""))
        for a in data["alerts"]
        if a["labels"].get("instance") == instance
    }


@pytest.fixture(scope="module")
def observed(lab: Lab) -> Iterator[Observed]:
    """Prometheus and the stand-in in the gateway, for the whole module."""
    binary = find_prometheus()
    if binary is None:
        pytest.skip("needs the prometheus server (Debian package prometheus)")
    workdir = lab.workdir / "prometheus"
    workdir.mkdir(exist_ok=True)
    # Picked together: the agent's stays free until a test starts it.
    prom_port, stand_in_port, agent_port = pick_ports(3, lab.gw)
    stand_in, agent = f"127.0.0.1:{stand_in_port}", f"127.0.0.1:{agent_port}"
    proc = start_stand_in(lab, stand_in, workdir / "stand-in.log")
    try:
        targets = [ScrapeTarget(JOB, stand_in), ScrapeTarget(JOB, agent)]
        with start_prometheus(
            workdir, targets, netns=lab.gw, rule_files=[RULES], port=prom_port, binary=binary
        ) as prom:
            yield Observed(prom, stand_in, agent)
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# -- tests ----------------------------------------------------------------------------------------


def test_every_dashboard_query_has_data_from_the_stand_in(observed: Observed) -> None:
    prom, instance = observed.prom, observed.stand_in
    scrapes = f'count_over_time(up{{job="{JOB}", instance="{instance}"}}[1m])'
    prom.wait_for(f"{scrapes} >= {SCRAPES_BEFORE_QUERYING}", timeout=20.0)

    results = run_dashboard(observed, instance, STAND_IN_WINDOW)
    empty = [q.where for q, samples in results.items() if not samples]
    assert not empty, f"panel queries without data: {empty}"
    not_finite = {
        q.where: [s.describe() for s in samples if not math.isfinite(s.value)]
        for q, samples in results.items()
        if not all(math.isfinite(s.value) for s in samples)
    }
    assert not not_finite, f"panel queries with NaN or Inf: {not_finite}"
    # The queries select the one instance: none of the agent's (down) series leak in.
    leaked = [
        q.where
        for q, samples in results.items()
        for s in samples
        if s.labels.get("instance", instance) != instance
    ]
    assert not leaked, f"queries that ignore $instance: {leaked}"

    # Spot checks that the numbers mean what the panels say.
    by_title = {q.where.split("'")[1]: samples for q, samples in results.items()}
    traffic = {
        s.labels["verdict"]: s.value for s in by_title["Allowed and denied packets per destination"]
    }
    # 40 and 3 packets/s; a young series' rate over a short window comes out a bit low.
    assert traffic["denied"] > 0, traffic
    assert traffic["allowed"] / traffic["denied"] == pytest.approx(40 / 3, rel=0.05), traffic
    assert [s.value for s in by_title["Stale sources"]] == [1]
    assert [s.labels["version"] for s in by_title["Version"]] == [STAND_IN_VERSION]
    egress = {s.labels["address"] for s in by_title["Egress addresses"]}
    assert egress == {"192.0.2.10", "2001:db8:1::10"}


def test_dashboard_variables_list_the_instances(observed: Observed) -> None:
    prom = observed.prom
    prom.wait_for(f'repogate_build_info{{instance="{observed.stand_in}"}}', timeout=20.0)
    variables = {q.where: q for q in dashboard_queries(load_dashboard()) if q.kind == "variable"}
    job = variables["variable 'job'"]
    assert prom.label_values(job.label, job.expr) == [JOB]
    instance = variables["variable 'instance'"]
    match = expand_variables(instance.expr, {"job": JOB})
    assert observed.stand_in in prom.label_values(instance.label, match)


def test_the_stand_in_serves_exactly_the_documented_metrics(observed: Observed) -> None:
    prom = observed.prom
    prom.wait_for(f'repogate_build_info{{instance="{observed.stand_in}"}}', timeout=20.0)
    served = {
        s.labels["__name__"]
        for s in prom.query(
            f'group by (__name__) ({{__name__=~"repogate_.+", instance="{observed.stand_in}"}})'
        )
    }
    assert served == series_names(documented_metrics())


def test_rules_evaluate_on_live_data_and_alert_on_the_failing_source(observed: Observed) -> None:
    prom, instance = observed.prom, observed.stand_in
    expected = {
        ("RepogateSourceStale", "warning", "laptops"),
        ("RepogateSourceStale", "critical", "laptops"),
        ("RepogateShrinkHeld", "warning", "laptops"),
    }

    def settled() -> set[tuple[str, str, str]] | None:
        if any(rule.get("health") == "unknown" for rule in prom.rules()):
            return None  # not evaluated yet
        alerts = active_alerts(prom, instance)
        return alerts if expected <= alerts else None

    alerts = poll(
        "alerts on the stand-in",
        settled,
        20.0,
        lambda: f"alerts: {active_alerts(prom, instance)}\nrules: {rule_problems(prom)}",
    )
    assert not rule_problems(prom)
    # Its reconciles fail now and then but keep succeeding, its egress addresses are old
    # news only after an hour: nothing else is pending.
    assert alerts == expected


def agent_config(lab: Lab, listen: str, known_hosts: Path) -> None:
    """The lab config with every kind of source, so every panel has something to show.

    office is static; laptops a file with bob and one bad line (a rejected entry); home a
    dynamic-DNS name, and Bitbucket also known by its DNS name, both served by the lab's
    dnsmasq (DNS queries). The egress interface is the gateway's side of the Bitbucket link:
    the lab has no default route.
    """
    laptops = lab.workdir / "laptops.txt"
    laptops.write_text(f"# exported by the MDM\n{BOB}\nnot-an-address\n")
    dns_group = {"name": "home", "type": "dns", "names": [HOME_NAME], "min_refresh": "1s"}
    file_group = {"name": "laptops", "type": "file", "path": str(laptops), "interval": "1s"}
    # A device group: a dnsmasq lease of a device its inventory calls non-compliant.
    leases, devices = lab.workdir / "dnsmasq.leases", lab.workdir / "devices.csv"
    leases.write_text("0 02:00:00:00:00:08 10.30.0.8 bobs-phone *\n")
    devices.write_text("device,compliant,owner,macs\nPHONE8,false,bob,02:00:00:00:00:08\n")
    inventory = {"name": "it", "type": "file", "path": str(devices), "format": "csv"}
    lan_group = {"name": "lan", "type": "dhcp", "leases": str(leases), "inventory": "it"}
    egress = f"{lab.tag}g{lab.spec.link('bitbucket').short}"
    # A probe of a real sshd beside the lab's Bitbucket (it passes: the agent stays quiet)
    # and the gateway's own address declared as the egress address, for those panels.
    probe = {"name": "ssh", "type": "ssh", "target": f"{SSHD_ADDRESS}:22", "timeout": "2s"}
    overrides: dict[str, Any] = {
        "agent": {"verify_interval": "3.5s", "egress_interfaces": [egress]},
        "egress": {"addresses": [lab.spec.link("bitbucket").gw_v4]},
        "probes": [{**probe, "known_hosts": str(known_hosts)}],
        "metrics": {"listen": listen},
        "resolver": {"nameservers": [DNS_ADDRESS], "timeout": "1s"},
        "destinations": {"bitbucket": {"hosts": ["bitbucket.lab.test"], "min_refresh": "1s"}},
        "inventories": [inventory],
        "clients": [office_group(OFFICE_WITHOUT_BOB), file_group, dns_group, lan_group],
    }
    lab.write_config(overrides)


SSHD_ADDRESS = "198.51.100.30"


@pytest.fixture
def sshd_known_hosts(bare_lab: Lab, tmp_path: Path) -> Iterator[Path]:
    """A real sshd beside the lab's Bitbucket, and a known_hosts naming its keys."""
    server, server_if = bare_lab.ns("bitbucket"), bare_lab._ifnames("bitb")[1]
    netns.add_address(server, server_if, f"{SSHD_ADDRESS}/24")
    try:
        with start_sshd(server, tmp_path / "sshd", [(SSHD_ADDRESS, 22)]) as sshd:
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text(sshd.known_hosts([SSHD_ADDRESS]))
            yield known_hosts
    finally:
        netns.run(
            ["ip", "-n", server, "address", "del", f"{SSHD_ADDRESS}/24", "dev", server_if],
            check=False,
        )


@pytest.fixture
def dns(bare_lab: Lab, tmp_path: Path) -> Iterator[DnsServer]:
    """dnsmasq in the lab's `other` namespace, answering for lab.test."""
    with DnsServer(
        workdir=tmp_path / "dns",
        netns=bare_lab.ns("other"),
        address=DNS_ADDRESS,
        hosts=dict(DNS_HOSTS),
    ) as server:
        yield server


def test_every_dashboard_query_has_data_from_the_agent(
    observed: Observed, bare_lab: Lab, dns: DnsServer, sshd_known_hosts: Path, tmp_path: Path
) -> None:
    lab, prom, instance = bare_lab, observed.prom, observed.agent
    for entry in lab.state_dir.iterdir():
        if entry.is_file():
            entry.unlink()
        else:
            shutil.rmtree(entry)
    agent_config(lab, instance, sshd_known_hosts)
    env = {k: v for k, v in lab.env().items() if k not in _SYSTEMD_ENV}
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log_file:
        daemon = subprocess.Popen(
            lab.repogate_argv("run"),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    loops = []

    def context() -> str:
        state = "running" if daemon.poll() is None else f"exited {daemon.returncode}"
        return f"daemon {state}; its log:\n{log_path.read_text(errors='replace')}"

    def scraped() -> bool | None:
        if daemon.poll() is not None:
            pytest.fail(f"the daemon exited\n{context()}")
        return prom.query(f'up{{job="{JOB}", instance="{instance}"}} == 1') != [] or None

    try:
        poll("the agent's metrics scraped", scraped, 15.0, context)
        # Allowed (alice; bob through the file group) and refused (mallory) connections.
        loops = [
            lab.start_loop(client, PROTECTED_SSH, interval=0.2, deadline=30.0)
            for client in ("alice", "bob", "mallory")
        ]
        for running in loops:
            running.wait_running()

        def both_verdicts() -> bool | None:
            found = prom.query(
                f'sum by (verdict) (increase(repogate_packets_total{{instance="{instance}"}}'
                f"[{AGENT_WINDOW}])) > 0"
            )
            return len(found) == 2 or None

        poll("allowed and denied packets counted", both_verdicts, 15.0, context)
        scrapes = f'count_over_time(repogate_build_info{{instance="{instance}"}}[1m])'
        prom.wait_for(f"{scrapes} >= {SCRAPES_BEFORE_QUERYING}", timeout=15.0)

        results = run_dashboard(observed, instance, AGENT_WINDOW)
        empty = [q.where for q, samples in results.items() if not samples]
        assert not empty, f"panel queries without data from the agent: {empty}\n{context()}"
        served = {
            s.labels["__name__"]
            for s in prom.query(
                f'group by (__name__) ({{__name__=~"repogate_.+", instance="{instance}"}})'
            )
        }
        missing = series_names(documented_metrics()) - served
        assert not missing, f"documented metrics the agent does not serve: {sorted(missing)}"
        assert not rule_problems(prom)

        # What the lab config implies.
        def value(expr: str) -> float:
            samples = prom.query(expr)
            assert len(samples) == 1, f"{expr}: {samples}\n{context()}"
            return samples[0].value

        on = f'instance="{instance}"'
        assert value(f'repogate_build_info{{{on}, version="{__version__}"}}') == 1
        assert value(f'repogate_group_entries{{{on}, group="laptops"}}') == 1
        assert value(f'repogate_group_entries{{{on}, group="home"}}') == 1
        for source in ("laptops", "home", "destination:bitbucket:hosts"):
            of = f'{on}, source="{source}"'
            assert value(f"repogate_source_up{{{of}}}") == 1, source
            assert value(f"repogate_source_stale{{{of}}}") == 0, source
            age = value(f"time() - repogate_source_last_success_timestamp_seconds{{{of}}}")
            assert 0 <= age < 60, source
        assert value(f'repogate_source_rejected_entries_total{{{on}, source="laptops"}}') >= 1
        assert value(f'repogate_dns_queries_total{{{on}, result="ok"}}') >= 1
        assert value(f'repogate_set_elements{{{on}, set="client_laptops_v4_addr"}}') == 1
        assert value(f'sum(repogate_reconciles_total{{{on}, result="ok"}})') >= 1
        egress = {s.labels["address"] for s in prom.query(f"repogate_egress_address_info{{{on}}}")}
        assert lab.spec.link("bitbucket").gw_v4 in egress
        # Up, fresh and quiet: nothing alerts (RepogateDown may linger from before its start).
        assert not active_alerts(prom, instance) - {("RepogateDown", "critical", "")}
    finally:
        for running in loops:
            running.kill()
        stop_process(daemon)


if __name__ == "__main__":
    sys.exit(main())
