"""sources: file client groups (lines or JSON); a failing source keeps what is enforced."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repogate.addresses import Entry, InvalidEntryError, normalise, parse_entry, parse_many
from repogate.cli.main import main
from repogate.config import Config, FileClients, load_config, parse_config
from repogate.config.presets import PRESETS
from repogate.errors import ConfigError, SourceError
from repogate.nft.backend import RecordingBackend
from repogate.report import describe_sources
from repogate.sources import SourceResult, specs
from repogate.sources.file import FileSource
from repogate.sources.formats import parse_json
from tests.unit.conftest import sync


def _with_file_group(config_dict: dict[str, Any], **group: object) -> dict[str, Any]:
    config_dict["clients"].append({"name": "mdm", "type": "file", **group})
    return config_dict


# --- config ---


def test_file_group_path_is_relative_to_the_config(
    config_dict: dict[str, Any], tmp_path: Path
) -> None:
    data = _with_file_group(config_dict, path="lists/mdm.txt")
    config = parse_config(data, tmp_path / "repogate.toml")
    group = config.group("mdm")
    assert group == FileClients("mdm", tmp_path / "lists" / "mdm.txt")


def test_file_group_absolute_path_and_json(config_dict: dict[str, Any]) -> None:
    data = _with_file_group(config_dict, path="/srv/mdm.json", format="json", json_path="a.b")
    group = parse_config(data).group("mdm")
    assert group == FileClients("mdm", Path("/srv/mdm.json"), "json", "a.b")


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ({}, ["clients[2].path: is required"]),
        ({"path": "x", "format": "csv"}, ["clients[2].format: 'csv' is not one of: lines, json"]),
        (
            {"path": "x", "json_path": "a"},
            ['clients[2].json_path: only applies with format = "json"'],
        ),
        (
            {"path": "x", "addresses": ["10.0.0.1"]},
            ["clients[2].addresses: unknown key"],
        ),
    ],
)
def test_file_group_errors(
    config_dict: dict[str, Any], group: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_with_file_group(config_dict, **group))
    assert [str(p) for p in caught.value.problems] == expected


# --- list formats ---


def _fetch(tmp_path: Path, text: str, **group: Any) -> SourceResult:
    path = tmp_path / "list"
    path.write_text(text, encoding="utf-8")
    return FileSource(FileClients("mdm", path, **group), {4: 8, 6: 32}).fetch()


def test_lines_skip_comments_and_blanks(tmp_path: Path) -> None:
    text = "# MDM export\n10.50.0.1\n\n  10.50.0.2  # laptop\n#10.50.0.3\n10.50.1.0/24\nbad\n"
    result = _fetch(tmp_path, text)
    assert result.entries.addresses_v4 == {"10.50.0.1", "10.50.0.2"}
    assert result.entries.networks_v4 == {"10.50.1.0/24"}
    assert result.accepted == 3
    assert [str(r) for r in result.rejected_sample] == [
        "line 7: 'bad' is not an IP address or network"
    ]
    assert result.origin == str(tmp_path / "list")


def test_lines_reject_broad_networks_with_their_line(tmp_path: Path) -> None:
    result = _fetch(tmp_path, "10.50.0.1\n0.0.0.0/0\n2001:db8::/16\n")
    assert result.accepted == 1
    assert [r.where for r in result.rejected_sample] == ["line 2", "line 3"]


def test_json_list_under_a_key_path(tmp_path: Path) -> None:
    text = '{"data": {"addresses": ["10.50.0.1", 7, "2001:db8::/48"]}}'
    result = _fetch(tmp_path, text, format="json", json_path="data.addresses")
    assert result.entries.addresses_v4 == {"10.50.0.1"}
    assert result.entries.networks_v6 == {"2001:db8::/48"}
    assert [str(r) for r in result.rejected_sample] == ["$.data.addresses[1]: 7 is not a string"]


def test_file_that_is_not_utf8_fails(tmp_path: Path) -> None:
    path = tmp_path / "list"
    path.write_bytes(b"10.0.0.1 # caf\xe9\n")
    with pytest.raises(SourceError, match="not UTF-8"):
        FileSource(FileClients("mdm", path), {4: 8, 6: 32}).fetch()


@pytest.mark.parametrize(
    ("text", "json_path", "message"),
    [
        ("{not json", None, "not valid JSON"),
        ('{"data": {}}', "data.addresses", "JSON has no key 'addresses' at $.data"),
        ('{"data": 5}', None, "JSON at $ is not a list"),
        ('{"data": "10.0.0.1"}', "data", "JSON at $.data is not a list"),
    ],
)
def test_parse_json_failures(text: str, json_path: str | None, message: str) -> None:
    with pytest.raises(SourceError, match=message.replace("$", r"\$")):
        parse_json(text, json_path)


def test_parse_many_rejects_without_failing() -> None:
    items = [
        "10.0.0.1",
        "10.0.0.1",
        "2001:DB8::1",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "x",
        5,
        "0.0.0.0/0",
    ]
    parsed = parse_many(items, lambda i: f"item {i}", {4: 8, 6: 32})
    assert parsed.entries.addresses_v4 == {"10.0.0.1"}
    assert parsed.entries.addresses_v6 == {"2001:db8::1"}
    assert parsed.entries.networks_v4 == {"10.1.0.0/16"}
    assert parsed.accepted == 5
    assert parsed.rejected_count == 3
    assert [str(r) for r in parsed.rejected_sample] == [
        "item 5: 'x' is not an IP address or network",
        "item 6: 5 is not a string",
        "item 7: '0.0.0.0/0' is broader than /8",
    ]


def test_parse_many_keeps_a_bounded_sample() -> None:
    parsed = parse_many([f"bad{n}" for n in range(50)], str, sample=10)
    assert parsed.rejected_count == 50
    assert len(parsed.rejected_sample) == 10


# --- gather and sync ---


@pytest.fixture
def file_config(
    write_config: Callable[[str], Path], base_toml: str, tmp_path: Path
) -> Callable[[str | None], Config]:
    """A config file with a `mdm` file group; call with the list's text (None: no list)."""

    def make(text: str | None) -> Config:
        listing = tmp_path / "mdm.txt"
        if text is None:
            listing.unlink(missing_ok=True)
        else:
            listing.write_text(text, encoding="utf-8")
        group = '\n[[clients]]\nname = "mdm"\ntype = "file"\npath = "mdm.txt"\n'
        agent = f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        return load_config(write_config(base_toml.replace("[agent]\n", agent) + group))

    return make


def test_file_group_entries_reach_the_sets(file_config: Callable[[str | None], Config]) -> None:
    config = file_config("10.50.0.1\n10.50.1.0/24\nnonsense\n")
    result = sync(config, RecordingBackend(), dry_run=True)
    assert result.desired.sets["client_mdm_v4_addr"].elements == {"10.50.0.1"}
    assert result.desired.sets["client_mdm_v4_net"].elements == {"10.50.1.0/24"}
    lines = describe_sources(result.generation, result.inputs, result.outcome)
    assert lines == [
        f"group mdm (file {config.group('mdm').path}): 2 entries, 1 entry rejected "
        "(line 3: 'nonsense' is not an IP address or network)"
    ]


def test_failed_source_keeps_what_the_kernel_enforces(
    file_config: Callable[[str | None], Config], kernel: Any
) -> None:
    sync(file_config("10.50.0.1\n10.50.0.2\n"), kernel)
    config = file_config(None)  # the export vanished
    result = sync(config, kernel)
    assert "mdm" in result.failures
    assert not any(change.name.startswith("client_mdm") for change in result.plan.set_changes)
    assert kernel.elements("repogate", "client_mdm_v4_addr") == {"10.50.0.1", "10.50.0.2"}
    (line,) = describe_sources(result.generation, result.inputs, result.outcome)
    assert line.startswith("group mdm: FAILED: cannot read ")
    assert "; serving its last known good entries, fetched " in line


def test_failed_source_on_first_sync_allows_nobody_from_it(
    file_config: Callable[[str | None], Config], kernel: Any
) -> None:
    sync(file_config(None), kernel)
    assert kernel.elements("repogate", "client_mdm_v4_addr") == set()
    assert kernel.elements("repogate", "client_office_v4_addr") == {"10.9.8.7"}


def test_sync_exits_1_when_a_source_fails(
    file_config: Callable[[str | None], Config], kernel: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = file_config(None)
    out, err = io.StringIO(), io.StringIO()
    code = main(["sync", "--config", str(config.path)], lambda: kernel, out, err)
    assert code == 1
    assert "FAILED" in out.getvalue()
    assert "1 source(s) failed" in err.getvalue()
    assert capsys.readouterr().err == ""
    assert kernel.read_table("repogate") is not None  # the other groups were still applied


def test_file_changes_are_minimal(file_config: Callable[[str | None], Config], kernel: Any) -> None:
    sync(file_config("10.50.0.1\n10.50.0.2\n"), kernel)
    result = sync(file_config("10.50.0.2\n10.50.0.3\n"), kernel)
    (change,) = result.plan.set_changes
    assert (change.name, change.add, change.delete) == (
        "client_mdm_v4_addr",
        {"10.50.0.3"},
        {"10.50.0.1"},
    )
    assert not result.plan.rewrite_rules


LINE_KINDS: list[tuple[float, Callable[[random.Random, int], str]]] = [
    (0.90, lambda rng, n: f"10.{n % 200}.{rng.randrange(256)}.{rng.randrange(256)}"),
    (0.93, lambda rng, n: f"2001:DB8::{n:x}"),
    (0.95, lambda rng, n: f"10.{200 + n % 50}.{rng.randrange(256)}.0/24"),
    (0.96, lambda rng, n: ""),
    (0.97, lambda rng, n: "# comment"),
    (0.98, lambda rng, n: f"10.0.0.{256 + n}"),  # invalid
    (0.99, lambda rng, n: "0.0.0.0/0"),  # too broad
    (1.00, lambda rng, n: f" 10.9.9.{n % 256}  # with a comment"),
]


def _random_line(rng: random.Random, n: int) -> str:
    pick = rng.random()
    make = next(make for limit, make in LINE_KINDS if pick < limit)
    return make(rng, n)


def _reference(lines: list[str]) -> tuple[list[Entry], list[str]]:
    """Entry-by-entry parsing: the accepted entries and the rejected lines."""
    accepted: list[Entry] = []
    rejected: list[str] = []
    for number, line in enumerate(lines, start=1):
        text = line.partition("#")[0].strip()
        if not text:
            continue
        try:
            entry = parse_entry(text)
        except InvalidEntryError:
            rejected.append(f"line {number}")
            continue
        if entry.prefixlen < (8 if entry.family == 4 else 32):
            rejected.append(f"line {number}")
        else:
            accepted.append(entry)
    return accepted, rejected


def test_large_list_matches_entry_by_entry_parsing(tmp_path: Path) -> None:
    """The bulk path for large lists agrees with parse_entry on every line."""
    rng = random.Random(3)
    lines = [_random_line(rng, n) for n in range(6_000)]
    result = _fetch(tmp_path, "\n".join(lines) + "\n")
    accepted, rejected = _reference(lines)
    assert result.entries == normalise(accepted)
    assert result.accepted == len(accepted)
    assert result.rejected_count == len(rejected)
    assert [r.where for r in result.rejected_sample] == rejected[: len(result.rejected_sample)]
    assert len(result.rejected_sample) == 10


# --- fallbacks: what a source serves before it ever answered ---


def test_only_a_presets_feed_carries_the_packaged_snapshot(tmp_path: Path) -> None:
    config = parse_config(
        {
            "agent": {"state_dir": str(tmp_path)},
            "destinations": {
                "bitbucket": {"preset": "bitbucket"},
                "own": {"hosts": ["git.example.com"], "ports": [22]},
            },
            "clients": [{"name": "office", "type": "static", "addresses": ["10.20.0.0/16"]}],
        }
    )
    fallbacks = {spec.key: spec.fallback for spec in specs(config)}
    assert fallbacks == {
        "office": None,
        "destination:bitbucket:hosts": None,
        "destination:bitbucket:feed": PRESETS["bitbucket"].snapshot,
        "destination:own:hosts": None,
    }
