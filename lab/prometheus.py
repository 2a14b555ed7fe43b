"""A real Prometheus server for tests, and what a Grafana dashboard asks it.

`start_prometheus` runs Debian's `/usr/bin/prometheus` on 127.0.0.1 (of the host, or of a lab
namespace such as the gateway) with a throwaway TSDB, scraping its targets and evaluating its
rules every second, and waits until it is ready:

    with start_prometheus(workdir, [ScrapeTarget("repogate", "127.0.0.1:10419")],
                          netns=lab.gw, rule_files=[RULES]) as prom:
        prom.wait_for('up{job="repogate"} == 1')
        samples = prom.query('sum by (verdict) (rate(repogate_packets_total[5s]))')

A server inside a namespace is only reachable from inside it: sockets belong to the namespace
of the process that opens them. So its HTTP API is read by the program half
(`python -m lab.prometheus get URL PATH...`, stdlib only) run there with `ip netns exec`, one
process per batch of requests; a server on the host is read directly. Either way the host
half sees the same `Prometheus` object.

It is ready in a fraction of a second, but its service discovery hands the first targets to
the scrapers only about 5 s later (the discovery manager throttles its updates): start one
server per test module, not per test.

`dashboard_queries` lists every PromQL expression of a Grafana dashboard (panel targets,
annotations, query variables) and `expand_variables` replaces Grafana's `$variables` in
them, so tests can check each one against promtool or a live server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from lab.errors import LabError
from lab.netns import in_netns
from lab.netns import run as run_command

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = "prometheus"  # Debian package `prometheus`
START_TIMEOUT = 20.0
HTTP_TIMEOUT = 5.0


def find_prometheus() -> str | None:
    """Path of the prometheus binary, or None if it is not installed."""
    return shutil.which(PROMETHEUS)


# -- program half (runs inside the namespace) ------------------------------------------------


def fetch(url: str, timeout: float = HTTP_TIMEOUT) -> dict[str, Any]:
    """GET a URL: {"code": HTTP status (0: no connection), "body": text}."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return {"code": response.status, "body": response.read().decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"code": exc.code, "body": exc.read().decode(errors="replace")}
    except OSError as exc:  # URLError, refused, reset, timeout
        return {"code": 0, "body": str(exc)}


def fetch_all(base: str, paths: Sequence[str], wait: float) -> list[dict[str, Any]]:
    """Fetch each path under `base`; retry a path that got no connection for `wait` seconds."""
    deadline = time.monotonic() + wait
    results = []
    for path in paths:
        while True:
            result = fetch(base + path)
            if result["code"] != 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        results.append(result)
    return results


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct TCP ports nothing listens on right now, on 127.0.0.1 here.

    All are bound at once while they are picked, so they differ from each other.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m lab.prometheus {get,port}`."""
    parser = argparse.ArgumentParser(description="talk to a Prometheus inside a namespace")
    verbs = parser.add_subparsers(dest="verb", required=True)
    get = verbs.add_parser("get", help="GET each PATH under URL; print one JSON list")
    get.add_argument("--wait", type=float, default=0.0, help="retry refused connections")
    get.add_argument("url")
    get.add_argument("paths", nargs="+", metavar="PATH")
    ports = verbs.add_parser("ports", help="print free TCP ports on 127.0.0.1, one a line")
    ports.add_argument("count", type=int)
    args = parser.parse_args(argv)
    if args.verb == "ports":
        print(*free_ports(args.count), sep="\n")
    else:
        json.dump(fetch_all(args.url, args.paths, args.wait), sys.stdout)
    return 0


# -- host half ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScrapeTarget:
    """One target to scrape: its job name and host:port (as seen inside the namespace)."""

    job: str
    address: str
    metrics_path: str = "/metrics"


@dataclass(frozen=True)
class Sample:
    """One element of a query result: its labels and value (NaN stays NaN)."""

    labels: Mapping[str, str]
    value: float

    def describe(self) -> str:
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return f"{{{labels}}} {self.value:g}"


class QueryError(LabError):
    """Prometheus answered a query with an error (bad PromQL, execution error)."""


def config_document(
    targets: Sequence[ScrapeTarget], *, rule_files: Sequence[Path] = (), interval: str = "1s"
) -> dict[str, Any]:
    """A prometheus.yml as a dict (written as JSON, which YAML parsers read as it is)."""
    jobs: dict[tuple[str, str], list[str]] = {}
    for target in targets:
        jobs.setdefault((target.job, target.metrics_path), []).append(target.address)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        # Relative paths would be taken relative to the config file, in the scratch dir,
        # where a glob that matches nothing loads no rules and says nothing.
        "rule_files": [str(path.resolve()) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": path, "static_configs": [{"targets": addresses}]}
            for (job, path), addresses in jobs.items()
        ],
    }


@dataclass
class Prometheus:
    """A running Prometheus server and the way to reach its HTTP API."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    netns: str | None = None
    python: str = sys.executable
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the server, as seen from its namespace."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def log(self) -> str:
        """The server's own log (stderr), for assertion messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    # -- HTTP --------------------------------------------------------------------------------

    def get(self, paths: Sequence[str], *, wait: float = 0.0) -> list[dict[str, Any]]:
        """GET every path (one process for all, in a namespace); see `fetch` for each result."""
        if not paths:
            return []
        if self.netns is None:
            return fetch_all(self.url, paths, wait)
        argv = in_netns(
            self.netns,
            [self.python, "-m", "lab.prometheus", "get", "--wait", str(wait), self.url, *paths],
        )
        timeout = wait + HTTP_TIMEOUT * len(paths) + 10.0
        proc = run_command(argv, timeout=timeout, env=self.env)
        results: list[dict[str, Any]] = json.loads(proc.stdout)
        return results

    def api(self, paths: Sequence[str]) -> list[Any]:
        """GET API paths; return each answer's `data`, raising QueryError for an error answer."""
        documents = []
        for path, result in zip(paths, self.get(paths), strict=True):
            try:
                document = json.loads(result["body"])
            except json.JSONDecodeError:
                document = None
            if not isinstance(document, dict) or document.get("status") != "success":
                detail = document.get("error") if isinstance(document, dict) else result["body"]
                raise QueryError(f"GET {path}: HTTP {result['code']}: {detail}")
            documents.append(document["data"])
        return documents

    def query_many(self, exprs: Sequence[str], at: float | None = None) -> list[list[Sample]]:
        """Evaluate every expression at the same instant (default: now); results in order."""
        when = time.time() if at is None else at
        paths = [
            "/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{when:.3f}"})
            for expr in exprs
        ]
        return [_samples(data) for data in self.api(paths)]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """Evaluate one expression (an instant query)."""
        return self.query_many([expr], at)[0]

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of `label` on series matching the selector `match` (Grafana's label_values)."""
        path = f"/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": match})
        values: list[str] = self.api([path])[0]
        return values

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health, lastError and, for alerts, their state."""
        data: dict[str, Any] = self.api(["/api/v1/rules"])[0]
        return [rule for group in data["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and lastError."""
        data: dict[str, Any] = self.api(["/api/v1/targets?state=active"])[0]
        targets: list[dict[str, Any]] = data["activeTargets"]
        return targets

    def wait_for(self, expr: str, timeout: float = 15.0) -> list[Sample]:
        """Wait until `expr` returns at least one sample; return them. LabError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.query(expr)
            if found:
                return found
            if not self.running():
                raise LabError(f"prometheus exited waiting for {expr}\n{self.log()}")
            if time.monotonic() >= deadline:
                raise LabError(
                    f"no result for {expr} within {timeout:g}s; targets: "
                    f"{json.dumps(self.targets())}\n{self.log()}"
                )
            time.sleep(0.25)

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `grace` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def pick_ports(
    count: int = 1, netns: str | None = None, *, python: str = sys.executable
) -> list[int]:
    """Distinct free ports on 127.0.0.1 of the namespace (nothing else binds in a lab's)."""
    if netns is None:
        return free_ports(count)
    argv = in_netns(netns, [python, "-m", "lab.prometheus", "ports", str(count)])
    return [int(line) for line in run_command(argv, env=lab_env()).stdout.split()]


def lab_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment in which `python -m lab.prometheus` imports this checkout's `lab`."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def start_prometheus(
    workdir: Path,
    targets: Sequence[ScrapeTarget],
    *,
    netns: str | None = None,
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
    port: int | None = None,
    binary: str | None = None,
    python: str = sys.executable,
    timeout: float = START_TIMEOUT,
) -> Prometheus:
    """Start Prometheus on 127.0.0.1 (in `netns` if given) and wait until it is ready.

    `workdir` gets the config, the TSDB and the log; it must exist and can be thrown away
    afterwards. `port` defaults to a free one: pass one from `pick_ports` when targets that
    are not listening yet have their ports picked too. The caller stops the server (`stop()`,
    or use it as a context manager).
    """
    binary = binary or find_prometheus()
    if binary is None:
        raise LabError("prometheus is not installed (Debian package `prometheus`)")
    config_path = workdir / "prometheus.yml"
    config = config_document(targets, rule_files=rule_files, interval=interval)
    config_path.write_text(json.dumps(config, indent=1) + "\n")
    if port is None:
        (port,) = pick_ports(1, netns, python=python)
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    if netns is not None:
        argv = in_netns(netns, argv)
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches the test, which then stops it
        )
    server = Prometheus(proc, port, workdir, netns, python, lab_env())
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Prometheus, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (result,) = server.get(["/-/ready"], wait=0.5)
        if result["code"] == 200:
            return
        if not server.running():
            raise LabError(f"prometheus exited with {server.proc.returncode}\n{server.log()}")
        if time.monotonic() >= deadline:
            raise LabError(f"prometheus not ready within {timeout:g}s\n{server.log()}")
        time.sleep(0.1)


def _samples(data: Mapping[str, Any]) -> list[Sample]:
    kind, result = data["resultType"], data["result"]
    if kind == "vector":
        return [Sample(item["metric"], float(item["value"][1])) for item in result]
    if kind == "scalar":
        return [Sample({}, float(result[1]))]
    if kind == "matrix":
        return [Sample(item["metric"], float(item["values"][-1][1])) for item in result]
    raise QueryError(f"unexpected result type {kind}")


# -- what a Grafana dashboard asks -------------------------------------------------------------

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class DashboardQuery:
    """One PromQL expression of a dashboard and where it sits.

    kind: `panel` (a panel target), `annotation`, or `variable` (the selector of a
    `label_values(SELECTOR, LABEL)` query variable; `label` is the label it lists).
    """

    kind: str
    where: str
    expr: str
    instant: bool = False
    label: str = ""


def variables_used(expr: str) -> set[str]:
    """Names of the Grafana variables an expression refers to."""
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(expr)}


def expand_variables(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables by `values`; KeyError names one that has no value."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def iter_panels(panels: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every panel, including those inside (collapsed) rows, in dashboard order."""
    found: list[Mapping[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found += iter_panels(panel.get("panels", []))
    return found


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[DashboardQuery]:
    """Every PromQL expression in a dashboard: panel targets, annotations, query variables."""
    queries = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"panel {panel['id']} {panel.get('title', '')!r} query {target['refId']}"
                queries.append(
                    DashboardQuery("panel", where, target["expr"], bool(target.get("instant")))
                )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("expr") or annotation.get("target", {}).get("expr")
        if expr:
            queries.append(DashboardQuery("annotation", f"annotation {annotation['name']!r}", expr))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, Mapping) else str(query)
        match = _LABEL_VALUES.match(text)
        if match is None:
            raise ValueError(f"variable {variable['name']}: not label_values(...): {text!r}")
        selector, label = match.group(1) or "", match.group(2)
        if selector:
            where = f"variable {variable['name']!r}"
            queries.append(DashboardQuery("variable", where, selector, True, label))
    return queries


if __name__ == "__main__":
    sys.exit(main())
