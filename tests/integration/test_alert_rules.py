"""The observability artefacts, checked by promtool and against the documented contract.

No root, no network, no Prometheus server (tests/e2e/test_prometheus.py runs one):

- `promtool check rules` and `promtool test rules` on config/prometheus/, and every alert has
  a case where it fires and one where it must not;
- `promtool check config` on the example scrape config;
- the Grafana dashboard: what Grafana needs to import it anywhere (data source variable, no
  fixed UIDs, a sane grid), and every PromQL expression in it parsed by promtool. promtool
  has no "check this query" verb, so each expression, with Grafana's variables replaced, is
  written into a throwaway rules file as a recording rule, which `check rules` parses;
- every metric the rules and the dashboard use, and every alert, is in docs/observability.md.

Skipped with a reason when promtool is missing (Debian package `prometheus`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from lab.prometheus import DashboardQuery, dashboard_queries, expand_variables, variables_used
from repogate.daemon.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "config" / "prometheus"
RULES = PROMETHEUS_DIR / "repogate.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "repogate.rules.test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.example.yml"
DASHBOARD = REPO / "config" / "grafana" / "repogate.json"
DOCS = REPO / "docs" / "observability.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (Debian package prometheus)"
)

# What Grafana would put in place of its variables, for parsing only.
GRAFANA_VALUES = {
    "job": "repogate",
    "instance": "gw1:10419|gw2:10419",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "6h",
    "datasource": "prometheus",
}
SEVERITIES = {"critical", "warning", "info"}
# Commands a runbook may point at; every description names at least one.
RUNBOOK_COMMANDS = ("repogate ", "journalctl ", "systemctl ", "nft ", "ip ", "curl ")
GRID_COLUMNS = 24


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=cwd,
    )


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


# -- reading the files without a YAML library ---------------------------------------------------


def alert_blocks(text: str) -> list[tuple[str, str]]:
    """(alert name, its YAML block) for every alerting rule, in file order."""
    starts = list(re.finditer(r"^\s*- alert: (\w+)\s*$", text, re.MULTILINE))
    ends = [m.start() for m in starts[1:]] + [len(text)]
    return [(m.group(1), text[m.start() : end]) for m, end in zip(starts, ends, strict=True)]


def rule_expressions(text: str) -> list[str]:
    """The `expr:` of every rule (one-line or a `|` block)."""
    exprs = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)expr: (.*)$", line)
        if match is None:
            continue
        indent, value = match.groups()
        if value.strip() not in {"|", "|-", ">", ">-"}:
            exprs.append(value)
            continue
        block = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= len(indent):
                break
            block.append(following.strip())
        exprs.append(" ".join(block))
    return exprs


def unit_test_cases(text: str) -> Iterator[tuple[str, bool]]:
    """(alertname, fires?) for each alert_rule_test case of the promtool test file."""
    current: str | None = None
    for line in text.splitlines():
        name = re.match(r"^\s*alertname: (\w+)\s*$", line)
        if name:
            current = name.group(1)
            continue
        expected = re.match(r"^\s*exp_alerts:\s*(\[\])?\s*$", line)
        if expected and current is not None:
            yield current, expected.group(1) is None
            current = None


def documented_table(heading: str) -> list[list[str]]:
    """The rows (cells, backticks stripped) of the first table under `## heading` in the docs."""
    text = DOCS.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[2:]]


def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from the docs' metric table."""
    return {row[0]: row[1] for row in documented_table("Metrics")}


def metric_names(expr: str) -> set[str]:
    """repogate_* names an expression reads (not recording rules, which contain a colon)."""
    return set(re.findall(r"(?<![\w:])(repogate_\w+)", expr))


def contract_name(name: str, documented: Mapping[str, str]) -> str:
    """A histogram's _bucket, _sum and _count series belong to the documented histogram."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and documented.get(base) == "histogram":
            return base
    return name


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def check_expressions(queries: Sequence[DashboardQuery], scratch: Path) -> str:
    """Write each query, variables replaced, as a recording rule; return promtool's verdict."""
    rules = [
        {"record": f"dashboard_query_{i}", "expr": expand_variables(q.expr, GRAFANA_VALUES)}
        for i, q in enumerate(queries)
    ]
    path = scratch / "dashboard.rules.yml"
    # JSON is YAML: no YAML library needed to write a rules file.
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
    proc = promtool("check", "rules", path)
    return "" if proc.returncode == 0 else output(proc)


# -- the rules -----------------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    proc = promtool("check", "rules", RULES)
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in proc.stdout, output(proc)


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    # From elsewhere than config/prometheus: rule_files are found relative to the test file.
    proc = promtool("test", "rules", RULE_TESTS, cwd=REPO)
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in proc.stdout, output(proc)


@needs_promtool
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    # A `for:` dropped by mistake makes RepogateDown fire at once: its tests must notice.
    # (Only its own tests run, the first two: the whole file takes seconds.)
    broken = RULES.read_text().replace("        for: 5m\n", "", 1)
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    preamble, first, second, *_rest = RULE_TESTS.read_text().split("\n  - name: ")
    assert "RepogateDown" in first and "RepogateDown" in second
    (tmp_path / RULE_TESTS.name).write_text("\n  - name: ".join([preamble, first, second]))
    proc = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert proc.returncode != 0, output(proc)
    assert "FAILED" in proc.stdout + proc.stderr, output(proc)


def test_every_alert_is_tested_both_firing_and_silent() -> None:
    alerts = {name for name, _block in alert_blocks(RULES.read_text())}
    cases = list(unit_test_cases(RULE_TESTS.read_text()))
    firing = {name for name, fires in cases if fires}
    silent = {name for name, fires in cases if not fires}
    assert alerts, "no alerts found in the rules file"
    assert not alerts - firing, f"alerts never tested firing: {sorted(alerts - firing)}"
    assert not alerts - silent, f"alerts never tested silent: {sorted(alerts - silent)}"
    assert not (firing | silent) - alerts, "tests name alerts that do not exist"


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    for name, block in alert_blocks(RULES.read_text()):
        assert name.startswith("Repogate"), name
        severity = re.search(r"^\s*severity: (\w+)\s*$", block, re.MULTILINE)
        assert severity is not None and severity.group(1) in SEVERITIES, (name, block)
        assert re.search(r"^\s*summary: \S", block, re.MULTILINE), (name, "no summary")
        description = block.split("description:", 1)[1] if "description:" in block else ""
        assert any(f"`{command}" in description for command in RUNBOOK_COMMANDS), (
            f"{name}: the description names no command to run"
        )


def test_alerts_on_counters_and_ratios_do_not_flap() -> None:
    # A rate or increase over a few scrapes jumps about: every window is at least 5 minutes.
    for expr in rule_expressions(RULES.read_text()):
        for window in re.findall(r"\[(\w+)\]", expr):
            number, unit = re.fullmatch(r"(\d+)([smhd])", window).groups()  # type: ignore[union-attr]
            seconds = int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
            assert seconds >= 300, f"window [{window}] is too short to be stable: {expr}"


# -- the example scrape config ------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_example_scrape_config() -> None:
    proc = promtool("check", "config", EXAMPLE_CONFIG)
    assert proc.returncode == 0, output(proc)
    assert "1 rule files found" in proc.stdout, output(proc)
    text = EXAMPLE_CONFIG.read_text()
    # RepogateDown selects the job by name.
    assert re.search(r"^\s*- job_name: repogate\s*$", text, re.MULTILINE)
    assert 'up{job="repogate"}' in RULES.read_text()


@needs_promtool
def test_the_commented_out_remote_job_is_valid_too(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text()
    marker = "  # - job_name: repogate"
    assert marker in text
    block = marker + text.split(marker, 1)[1]
    uncommented = [re.sub(r"^  # ?", "  ", line) for line in block.splitlines()]
    config = tmp_path / "prometheus.yml"
    config.write_text("scrape_configs:\n" + "\n".join(uncommented) + "\n")
    proc = promtool("check", "config", config)
    assert proc.returncode == 0, output(proc) + config.read_text()
    assert "scheme: https" in config.read_text()


# -- the dashboard --------------------------------------------------------------------------------


def test_dashboard_imports_on_any_grafana() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36, "older than Grafana 9"
    assert board["id"] is None, "an id ties the dashboard to one Grafana database"
    assert board.get("title")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert "label_values(repogate_build_info" in instance["definition"]
    # Every data source reference is the variable: no UID of somebody's Grafana.
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"uid": "([^"]*)"', text))
    assert uids <= {"${datasource}", board["uid"]}, uids
    assert board["uid"] == "repogate"


def test_every_panel_queries_the_datasource_variable() -> None:
    board = dashboard()
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    for panel in panels:
        where = f"panel {panel['id']} {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], where
        assert panel.get("description"), f"{where} explains nothing"
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]
    for annotation in board["annotations"]["list"]:
        assert annotation["datasource"]["uid"] == "${datasource}", annotation["name"]


def test_dashboard_grid_has_unique_ids_and_no_overlaps() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    taken: dict[tuple[int, int], int] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= GRID_COLUMNS, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps panel {taken[x, y]}"
                taken[x, y] = panel["id"]


def test_dashboard_has_the_promised_panels() -> None:
    exprs = " ".join(q.expr for q in dashboard_queries(dashboard()) if q.kind == "panel")
    for needed in (
        "rate(repogate_packets_total",
        "topk(",
        "repogate_set_elements",
        "repogate_group_entries",
        "repogate_source_last_success_timestamp_seconds",
        "repogate_source_stale",
        "repogate_source_up",
        "repogate_source_rejected_entries_total",
        "histogram_quantile(0.95, sum by (le) (rate(repogate_reconcile_duration_seconds_bucket",
        "repogate_reconciles_total",
        "repogate_set_changes_total",
        "repogate_dns_queries_total",
        "repogate_egress_address_info",
        "repogate_shrink_held",
        "repogate_drift_repairs_total",
        "repogate_config_reloads_total",
        "up{",
    ):
        assert needed in exprs, f"no panel uses {needed}"


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard())
    assert {q.kind for q in queries} == {"panel", "annotation", "variable"}
    problems = check_expressions(queries, tmp_path)
    if problems:
        # Name the culprits one by one: promtool stops at the first.
        bad = [q.where for q in queries if check_expressions([q], tmp_path)]
        pytest.fail(f"PromQL that does not parse: {bad}\n{problems}")


@needs_promtool
def test_the_expression_check_catches_a_broken_query(tmp_path: Path) -> None:
    broken = DashboardQuery("panel", "broken", 'sum by (set) (repogate_set_elements{set="x"}')
    assert check_expressions([broken], tmp_path)


def test_dashboard_queries_use_only_known_variables_and_grafana_windows() -> None:
    for query in dashboard_queries(dashboard()):
        unknown = variables_used(query.expr) - set(GRAFANA_VALUES)
        assert not unknown, f"{query.where}: unknown variables {unknown}"
        if query.kind != "panel":
            continue
        # Windows follow the dashboard: $__rate_interval (at least 4 scrapes at any zoom)
        # for rates, $__range for the whole time range.
        for window in re.findall(r"\[([^\]]+)\]", query.expr):
            assert window in {"$__rate_interval", "$__range"}, f"{query.where}: [{window}]"


def test_dashboard_queries_select_the_job_and_instance_variables() -> None:
    for query in dashboard_queries(dashboard()):
        if query.kind == "variable":
            continue
        for selector in re.findall(r"(?<![\w:])(?:repogate_\w+|up)\{([^}]*)\}", query.expr):
            assert 'job=~"$job"' in selector, f"{query.where}: {selector}"
            assert 'instance=~"$instance"' in selector, f"{query.where}: {selector}"
        bare = re.findall(r"(?<![\w:])(repogate_\w+|up)\b(?![{\w(])", query.expr)
        assert not bare, f"{query.where}: {bare} without job and instance matchers"


# -- the documented contract ----------------------------------------------------------------------


def test_every_metric_used_is_one_the_agent_exports() -> None:
    metrics = Metrics()
    metrics.watch_traffic(dict)  # the scrape-time traffic counters
    exported = {family.name for family in metrics.registry.collect()}
    used = {
        name
        for exprs in (
            rule_expressions(RULES.read_text()),
            [q.expr for q in dashboard_queries(dashboard())],
        )
        for expr in exprs
        for name in metric_names(expr)
    }
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert name in exported or base in exported, f"{name} is used but never exported"


def test_the_not_gated_alert_reads_the_gauge_the_agent_sets() -> None:
    metrics = Metrics()
    metrics.destination_sizes({"bitbucket": 0, "gitlab": 12})
    samples = {
        sample.labels["destination"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "repogate_destination_addresses"
        for sample in family.samples
    }
    assert samples == {"bitbucket": 0.0, "gitlab": 12.0}
    blocks = dict(alert_blocks(RULES.read_text()))
    assert "expr: repogate_destination_addresses == 0" in blocks["RepogateDestinationNotGated"]


def test_every_metric_used_is_documented() -> None:
    documented = documented_metrics()
    assert len(documented) >= 18
    assert set(documented.values()) <= {"counter", "gauge", "histogram"}
    for name, kind in documented.items():
        assert name == "up" or name.startswith("repogate_"), name
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"
    used = {
        (source, name)
        for source, exprs in (
            ("rules", rule_expressions(RULES.read_text())),
            ("dashboard", [q.expr for q in dashboard_queries(dashboard())]),
        )
        for expr in exprs
        for name in metric_names(expr)
    }
    undocumented = {(s, n) for s, n in used if contract_name(n, documented) not in documented}
    assert not undocumented, f"metrics used but not in docs/observability.md: {undocumented}"
    dashboard_uses = {contract_name(n, documented) for s, n in used if s == "dashboard"}
    unused = set(documented) - dashboard_uses - {"up"}
    assert not unused, f"documented metrics the dashboard never shows: {unused}"


def test_every_alert_is_documented() -> None:
    in_rules = {
        (name, re.search(r"severity: (\w+)", block).group(1))  # type: ignore[union-attr]
        for name, block in alert_blocks(RULES.read_text())
    }
    in_docs = {(row[0], row[1]) for row in documented_table("Alerts")}
    assert in_rules == in_docs
