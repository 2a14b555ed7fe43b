"""The audit trail: one JSON line per changed set, readable back by status and explain."""

from __future__ import annotations

import json
from pathlib import Path

from repogate.audit import AuditLog, classify
from repogate.model import DesiredState, Plan, SetChange, SetSpec


def desired() -> DesiredState:
    spec = SetSpec("client_home_v4_addr", 4, False, frozenset({"10.30.0.8"}), "group home")
    return DesiredState("repogate", ("forward",), {spec.name: spec}, (), ())


def moved() -> Plan:
    change = SetChange("client_home_v4_addr", frozenset({"10.30.0.8"}), frozenset({"10.30.0.7"}))
    return Plan(set_changes=(change,))


def test_each_change_is_one_json_line_everywhere(tmp_path: Path) -> None:
    extra = tmp_path / "audit" / "repogate-audit.log"
    audit = AuditLog(tmp_path / "state", extra)
    (line,) = audit.record(moved(), desired(), "refresh home")
    assert line["set"] == "client_home_v4_addr"
    assert line["owner"] == "group home"
    assert line["added"] == ["10.30.0.8"] and line["removed"] == ["10.30.0.7"]
    assert line["reason"] == "refresh"
    for path in (tmp_path / "state" / "audit.jsonl", extra):
        (written,) = path.read_text().splitlines()
        assert json.loads(written) == line


def test_reopen_follows_a_rotated_file(tmp_path: Path) -> None:
    extra = tmp_path / "audit.log"
    audit = AuditLog(tmp_path / "state", extra)
    audit.record(moved(), desired(), "sync")
    extra.rename(tmp_path / "audit.log.1")  # logrotate
    audit.reopen()  # SIGHUP
    audit.record(moved(), desired(), "sync")
    assert len(extra.read_text().splitlines()) == 1
    assert len((tmp_path / "audit.log.1").read_text().splitlines()) == 1


def test_trail_and_recent(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    audit.record(moved(), desired(), "refresh home")
    audit.record_event("repogate", "table deleted", "teardown")
    assert [line["set"] for line in audit.trail("10.30.0.7")] == ["client_home_v4_addr"]
    assert audit.trail("10.99.0.1") == []
    assert [line.get("event") for line in audit.recent(5)] == [None, "table deleted"]


def test_reasons() -> None:
    assert classify("refresh home", added=False, removed=True) == "revocation"
    assert classify("refresh home", added=True, removed=True) == "refresh"
    assert classify("drift repair", added=True, removed=False) == "drift repair"
    assert classify("expiry, verify", added=False, removed=True) == "expiry"
    assert classify("reload", added=True, removed=False) == "reload"
