"""cli: every verb through main(), with a fake backend; exit codes 0, 1 and 2."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from repogate.cli.main import main
from repogate.config import load_config
from repogate.errors import NftError, NftUnavailableError
from repogate.model import DesiredState, KernelChain, KernelTable
from repogate.nft.backend import Backend, RecordingBackend

Desired = Callable[..., DesiredState]
KernelFrom = Callable[..., KernelTable]


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def run(argv: list[str], backend: Backend | Callable[[], Backend] | None = None) -> Run:
    out, err = io.StringIO(), io.StringIO()
    if backend is None:
        factory: Callable[[], Backend] = RecordingBackend
    elif callable(backend) and not hasattr(backend, "read_table"):
        factory = backend
    else:
        factory = lambda: backend  # noqa: E731 - the same backend for every call
    code = main(argv, backend_factory=factory, out=out, err=err)
    return Run(code, out.getvalue(), err.getvalue())


def no_backend() -> Backend:
    raise AssertionError("this verb must not touch nftables")


@pytest.fixture
def config_file(write_config: Callable[[str], Path], base_toml: str) -> Path:
    return write_config(base_toml)


# --- check ---


def test_check_ok(config_file: Path) -> None:
    result = run(["check", "--config", str(config_file)], no_backend)
    assert result.code == 0
    assert result.err == ""
    assert result.lines == [
        f"{config_file}: ok: 2 client groups (5 local entries), 1 destinations, 0 rules, "
        "table inet repogate, hooks forward"
    ]


def test_check_shipped_config(shipped_config: Path) -> None:
    result = run(["check", "--config", str(shipped_config)], no_backend)
    assert result.code == 0
    assert len(result.lines) == 1
    assert result.lines[0].startswith(
        f"{shipped_config}: ok: 1 client groups (2 local entries, 2 network sources)"
    )


def test_check_reads_the_env_variable(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOGATE_CONFIG", str(config_file))
    result = run(["check"], no_backend)
    assert result.code == 0
    assert result.out.startswith(f"{config_file}: ok")


def test_explicit_config_beats_the_env_variable(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPOGATE_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert run(["check", "--config", str(config_file)], no_backend).code == 0


def test_config_option_before_the_verb(config_file: Path) -> None:
    # Regression: the verb's own --config default (None) used to reset this one.
    result = run(["--config", str(config_file), "check"], no_backend)
    assert result.code == 0, result.err


def test_invalid_config_exits_2_with_the_key_path(
    write_config: Callable[[str], Path], base_toml: str
) -> None:
    path = write_config(base_toml.replace('"10.9.8.7"', '"10.9.8.999"'))
    result = run(["check", "--config", str(path)], no_backend)
    assert result.code == 2
    assert result.out == ""
    assert "invalid config, nothing was changed" in result.err
    assert (
        f"{path}: clients[0].addresses[1]: '10.9.8.999' is not an IP address or network"
        in result.err
    )


def test_every_problem_is_printed(write_config: Callable[[str], Path], base_toml: str) -> None:
    text = base_toml.replace('"10.9.8.7"', '"10.9.8.999"').replace("[22, 443]", "[22, 0]")
    result = run(["check", "--config", str(write_config(text))], no_backend)
    assert result.code == 2
    assert "clients[0].addresses[1]" in result.err
    assert "destinations.bitbucket.ports[1]: 0 is outside 1-65535" in result.err


def test_missing_config_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run(["check", "--config", str(missing)], no_backend)
    assert result.code == 2
    assert f"{missing}: file not found" in result.err


def test_invalid_toml_exits_2(write_config: Callable[[str], Path]) -> None:
    result = run(["sync", "--config", str(write_config("clients = [\n"))], no_backend)
    assert result.code == 2
    assert "invalid TOML" in result.err


def test_invalid_config_never_reaches_the_kernel(
    write_config: Callable[[str], Path], base_toml: str
) -> None:
    path = write_config(base_toml.replace('name = "vpn"', 'name = "office"'))
    assert run(["sync", "--config", str(path)], no_backend).code == 2


# --- usage ---


def test_no_verb_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([], no_backend).code == 2
    assert "VERB" in capsys.readouterr().err


def test_unknown_verb_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["frobnicate"], no_backend).code == 2
    capsys.readouterr()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"], no_backend).code == 0
    assert capsys.readouterr().out.startswith("repogate ")


def test_run_with_an_invalid_config_exits_2(write_config: Callable[[str], Path]) -> None:
    path = write_config("[agent]\ntable = 5\n")
    result = run(["run", "--config", str(path)], no_backend)
    assert result.code == 2
    assert "agent.table: must be a string" in result.err


# --- sync ---


def test_sync_prints_changes_then_in_sync(
    config_file: Path, desired: Desired, kernel_from: KernelFrom
) -> None:
    backend = RecordingBackend()
    first = run(["sync", "--config", str(config_file)], backend)
    assert first.code == 0, first.err
    assert first.lines[0] == "table inet repogate: create"
    assert "create set client_office_v4_addr" in first.lines
    assert "rules: rewrite" in first.lines
    assert first.lines[-1].startswith("applied in one transaction: +8 -0 elements in ")
    assert len(backend.transactions) == 1

    enforced = kernel_from(desired(load_config(config_file)))
    second_backend = RecordingBackend(table=enforced)
    second = run(["sync", "--config", str(config_file)], second_backend)
    assert second.code == 0
    assert second.lines == ["table inet repogate: in sync, no changes"]
    assert second_backend.transactions == []


def test_sync_against_the_fake_kernel_converges(config_file: Path, kernel: Any) -> None:
    assert run(["sync", "--config", str(config_file)], kernel).code == 0
    again = run(["sync", "--config", str(config_file)], kernel)
    assert again.lines == ["table inet repogate: in sync, no changes"]
    assert len(kernel.transactions) == 1


def test_sync_prints_one_changed_address(
    write_config: Callable[[str], Path], base_toml: str, kernel: Any
) -> None:
    assert run(["sync", "--config", str(write_config(base_toml))], kernel).code == 0
    changed = write_config(base_toml.replace('"10.9.8.7"', '"10.9.8.8"'))
    result = run(["sync", "--config", str(changed)], kernel)
    assert result.lines == [
        "set client_office_v4_addr: +1 [+10.9.8.8]; -1 [-10.9.8.7]",
        result.lines[-1],
    ]
    assert result.lines[-1].startswith("applied in one transaction: +1 -1 elements")


def test_sync_dry_run_applies_nothing(config_file: Path) -> None:
    backend = RecordingBackend()
    result = run(["sync", "--dry-run", "--config", str(config_file)], backend)
    assert result.code == 0
    assert backend.transactions == []
    assert result.lines[0] == "would table inet repogate: create"
    assert all(line.startswith("would ") for line in result.lines)
    assert "applied" not in result.out


def test_sync_dry_run_in_sync(config_file: Path, desired: Desired, kernel_from: KernelFrom) -> None:
    backend = RecordingBackend(table=kernel_from(desired(load_config(config_file))))
    result = run(["sync", "--dry-run", "--config", str(config_file)], backend)
    assert result.lines == ["table inet repogate: in sync, no changes"]


def test_sync_show_transaction(config_file: Path) -> None:
    backend = RecordingBackend()
    result = run(["sync", "--show-transaction", "--config", str(config_file)], backend)
    assert result.code == 0
    start = result.lines.index("{")
    end = result.lines.index("}", start)
    document = json.loads("\n".join(result.lines[start : end + 1]))
    assert document["nftables"][0] == {"metainfo": {"json_schema_version": 1}}
    assert document["nftables"][1:] == backend.transactions[0]


def test_sync_refuses_a_foreign_table(config_file: Path) -> None:
    foreign = KernelTable(
        "repogate", {}, {"input": KernelChain("input", "input", "filter", 0, "drop", ())}, {}
    )
    backend = RecordingBackend(table=foreign)
    result = run(["sync", "--config", str(config_file)], backend)
    assert result.code == 1
    assert "repogate did not create it" in result.err
    assert backend.transactions == []


def test_nft_failure_exits_1(config_file: Path) -> None:
    class Refusing(RecordingBackend):
        def apply(self, commands: list[dict[str, Any]]) -> float:
            raise NftError("nftables rejected the transaction: boom")

    result = run(["sync", "--config", str(config_file)], Refusing())
    assert result.code == 1
    assert result.err == "repogate: nftables rejected the transaction: boom\n"


def test_missing_bindings_exit_1(config_file: Path) -> None:
    def factory() -> Backend:
        raise NftUnavailableError("the libnftables Python bindings are missing")

    result = run(["sync", "--config", str(config_file)], factory)
    assert result.code == 1
    assert "bindings are missing" in result.err


# --- render ---


def test_render(config_file: Path) -> None:
    result = run(["render", "--config", str(config_file)], no_backend)
    assert result.code == 0
    text = result.out
    assert text.startswith("table inet repogate {\n")
    assert text.endswith("}\n")
    for expected in (
        "\tcounter allowed_bitbucket {",
        "\tset client_office_v4_net {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
        "\t\telements = { 10.20.0.0/16 }\n\t}",
        "\tset client_office_v4_addr {\n\t\ttype ipv4_addr\n\t\telements = { 10.9.8.7 }\n\t}",
        "\tset client_vpn_v6_addr {\n\t\ttype ipv6_addr\n\t}",
        "\t\telements = { 104.192.136.0/21, 185.166.140.0/22 }",
        "\tchain gate {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "reject with tcp reset",
    ):
        assert expected in text


# --- status ---


@pytest.mark.parametrize(
    ("owner", "note"),
    [
        (None, "exists but repogate did not create it"),
        ("repogate instance 0123456789abcdef", "another repogate"),
    ],
    ids=["no-mark", "another-instance"],
)
def test_status_of_a_foreign_table_never_says_it_is_absent(
    config_file: Path, owner: str | None, note: str
) -> None:
    """The first line and the note below it must not contradict each other."""
    gate = KernelChain("gate", None, None, None, None, ())
    foreign = KernelTable("repogate", {}, {"gate": gate}, {}, owner=owner)
    result = run(["status", "--config", str(config_file)], RecordingBackend(table=foreign))
    assert result.code == 0
    assert result.lines[0] == "table inet repogate: present but NOT this repogate's (see below)"
    assert note in result.out and "not present" not in result.out
    as_json = run(
        ["status", "--json", "--config", str(config_file)], RecordingBackend(table=foreign)
    )
    assert '"not_ours": true' in as_json.out


def test_status_json(config_file: Path, kernel: Any) -> None:
    run(["sync", "--config", str(config_file)], kernel)
    kernel.set_counter("repogate", "allowed_bitbucket", 10, 1000)
    kernel.set_counter("repogate", "denied_bitbucket", 2, 120)
    result = run(["status", "--json", "--config", str(config_file)], kernel)
    assert result.code == 0
    status = json.loads(result.out)
    assert status["table"] == "repogate"
    assert status["present"] is True
    assert status["in_sync"] is True
    assert status["pending"] == {"add": 0, "delete": 0}
    assert status["daemon_pid"] is None  # built by the CLI: no daemon runs
    assert status["sets"]["client_office_v4_net"] == 1
    assert status["sets"]["client_vpn_v6_net"] == 0
    assert len(status["sets"]) == 10
    assert status["groups"] == {"office": 4, "vpn": 1}
    assert status["not_gated"] == []
    assert status["counters"] == {
        "bitbucket": {
            "allowed": {"packets": 10, "bytes": 1000},
            "denied": {"packets": 2, "bytes": 120},
        }
    }


def test_status_json_without_table(config_file: Path) -> None:
    result = run(["status", "--json", "--config", str(config_file)], RecordingBackend())
    assert result.code == 0
    status = json.loads(result.out)
    assert status["present"] is False
    assert status["in_sync"] is False
    assert status["pending"] == {"add": 8, "delete": 0}
    assert status["counters"] == {}


def test_status_text(
    write_config: Callable[[str], Path], base_toml: str, config_file: Path, kernel: Any
) -> None:
    absent = run(["status", "--config", str(config_file)], kernel).lines
    assert absent[0] == "table inet repogate: not present (run `repogate sync`)"
    assert "egress (the address Bitbucket sees):" in absent
    run(["sync", "--config", str(config_file)], kernel)
    changed = write_config(base_toml.replace('"10.9.8.7"', '"10.9.8.8", "10.9.8.9"'))
    result = run(["status", "--config", str(changed)], kernel)
    assert result.code == 0
    assert result.lines[0] == "table inet repogate: out of sync: 2 to add, 1 to delete"
    assert result.lines[1].startswith("daemon: none runs on this table")
    row = next(line for line in result.lines if "client_office_v4_addr" in line)
    assert row.split() == ["client_office_v4_addr", "2", "elements"]
    assert "  bitbucket: allowed 0 packets / 0 bytes, denied 0 packets / 0 bytes" in result.lines


# --- explain ---


def test_explain_approved_address(config_file: Path, kernel: Any) -> None:
    run(["sync", "--config", str(config_file)], kernel)
    result = run(["explain", "10.20.1.2", "--config", str(config_file)], kernel)
    assert result.code == 0
    assert result.lines[:2] == [
        "10.20.1.2 is in client group 'office' through entry 10.20.0.0/16 in set "
        "client_office_v4_net: enforced",
        "  bitbucket: allowed on TCP 22, 443 via office",
    ]
    assert result.lines[2:4] == ["", "audit trail of 10.20.1.2:"]
    (trail,) = result.lines[4:]
    assert trail.endswith("admitted via client_office_v4_net (group office, sync)")


def test_explain_unapproved_address(config_file: Path) -> None:
    result = run(["explain", "2001:db8:99::1", "--config", str(config_file)])
    assert result.code == 0
    assert result.lines[:2] == [
        "2001:db8:99::1 is in no client group.",
        "  bitbucket: refused on TCP 22, 443 (TCP reset)",
    ]


def test_explain_without_nftables(config_file: Path) -> None:
    def factory() -> Backend:
        raise NftUnavailableError("no bindings")

    result = run(["explain", "10.9.8.7", "--config", str(config_file)], factory)
    assert result.code == 0
    assert result.lines[0] == (
        "10.9.8.7 is in client group 'office' through entry 10.9.8.7 in set "
        "client_office_v4_addr: table not present"
    )


def test_explain_not_yet_synced(
    write_config: Callable[[str], Path], base_toml: str, config_file: Path, kernel: Any
) -> None:
    run(["sync", "--config", str(config_file)], kernel)
    changed = write_config(base_toml.replace('"10.9.8.7"', '"10.9.8.8"'))
    result = run(["explain", "10.9.8.8", "--config", str(changed)], kernel)
    assert result.lines[0].endswith("NOT in the kernel yet (run `repogate sync`)")


@pytest.mark.parametrize("address", ["bitbucket.org", "10.0.0.0/8", "10.0.0.999", ""])
def test_explain_non_address_exits_2(
    config_file: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    result = run(["explain", address, "--config", str(config_file)])
    assert result.code == 2
    assert result.out == ""
    # Regression: this used to go to sys.stderr instead of the `err` main() was given.
    assert result.err == f"repogate: {address!r} is not an IP address\n"
    assert capsys.readouterr().err == ""


# --- teardown ---


def test_teardown_when_absent(config_file: Path) -> None:
    backend = RecordingBackend()
    result = run(["teardown", "--config", str(config_file)], backend)
    assert result.code == 0
    assert result.lines == ["table inet repogate: not present, nothing to do"]
    assert backend.transactions == []


def test_teardown_deletes_only_the_owned_table(config_file: Path, kernel: Any) -> None:
    run(["sync", "--config", str(config_file)], kernel)
    result = run(["teardown", "--config", str(config_file)], kernel)
    assert result.code == 0
    assert result.lines == ["table inet repogate: deleted"]
    assert kernel.transactions[-1] == [
        {"delete": {"table": {"family": "inet", "name": "repogate"}}}
    ]
    assert kernel.read_table("repogate") is None


def test_teardown_refuses_a_foreign_table(config_file: Path) -> None:
    foreign = KernelTable(
        "repogate", {}, {"input": KernelChain("input", "input", "filter", 0, "drop", ())}, {}
    )
    backend = RecordingBackend(table=foreign)
    result = run(["teardown", "--config", str(config_file)], backend)
    assert result.code == 1
    assert "repogate did not create it" in result.err
    assert backend.transactions == []
