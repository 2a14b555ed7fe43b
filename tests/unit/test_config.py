"""config: TOML -> frozen dataclasses; every problem named by its key path, all at once."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repogate.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    Config,
    Grant,
    config_path,
    load_config,
    parse_config,
)
from repogate.errors import ConfigError, ConfigProblem, RepogateError


def problems(data: dict[str, Any]) -> list[str]:
    """Every problem of an invalid config, as the admin reads them."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return [str(problem) for problem in caught.value.problems]


def paths(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return [problem.path for problem in caught.value.problems]


# --- the shipped example and the happy path ---


def test_shipped_config_parses(shipped_config: Path) -> None:
    config = load_config(shipped_config)
    assert config.path == shipped_config
    assert config.agent == AgentConfig()
    assert [group.name for group in config.clients] == ["office"]
    assert list(config.destinations) == ["bitbucket"]
    bitbucket = config.destinations["bitbucket"]
    assert bitbucket.preset == "bitbucket"
    assert bitbucket.ports == (22, 443)
    assert bitbucket.hosts == (
        "bitbucket.org",
        "api.bitbucket.org",
        "ssh.bitbucket.org",
        "altssh.bitbucket.org",
    )
    assert bitbucket.feed is not None
    assert bitbucket.feed.http.url == "https://ip-ranges.atlassian.com/"
    assert bitbucket.feed.products == ("bitbucket",)
    assert bitbucket.feed.directions == ("ingress",)
    assert config.rules == ()


def test_base_config_values(config_dict: dict[str, Any]) -> None:
    config = parse_config(config_dict, Path("/x.toml"))
    assert config.path == Path("/x.toml")
    assert config.agent.table == "repogate"
    assert config.agent.hooks == ("forward",)
    assert config.agent.state_dir == Path("/var/lib/repogate")
    office = config.group("office")
    assert [entry.text for entry in office.entries] == [
        "10.20.0.0/16",
        "10.9.8.7",
        "2001:db8:20::/48",
        "2001:db8::5",
    ]
    assert office.type == "static"


def test_config_is_frozen(base_config: Config) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        base_config.agent.table = "other"  # type: ignore[misc]


def test_agent_settings(config_dict: dict[str, Any]) -> None:
    config_dict["agent"] = {
        "table": "gate-2",
        "state_dir": "/srv/repogate",
        "hooks": ["forward", "output"],
        "min_client_prefix_v4": 16,
        "min_client_prefix_v6": 48,
    }
    agent = parse_config(config_dict).agent
    assert agent == AgentConfig("gate-2", Path("/srv/repogate"), ("forward", "output"), 16, 48)


def test_agent_table_is_optional(config_dict: dict[str, Any]) -> None:
    del config_dict["agent"]
    assert parse_config(config_dict).agent == AgentConfig()


# --- errors name the key path exactly ---


def test_bad_client_address_names_its_path(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["addresses"] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.999"]
    assert problems(config_dict) == [
        "clients[0].addresses[3]: '10.0.0.999' is not an IP address or network"
    ]


def test_host_bits_error_keeps_suggestion_and_path(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][1]["addresses"] = ["10.30.0.1/24"]
    assert problems(config_dict) == [
        "clients[1].addresses[0]: '10.30.0.1/24' has host bits set (did you mean '10.30.0.0/24'?)"
    ]


def test_bad_destination_network_names_its_path(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"]["bitbucket"]["networks"][1] = "185.166.140.0/33"
    assert problems(config_dict) == [
        "destinations.bitbucket.networks[1]: '185.166.140.0/33' is not an IP address or network"
    ]


def test_config_error_message_carries_the_source(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["addresses"] = [42]
    with pytest.raises(ConfigError) as caught:
        parse_config(config_dict, Path("/etc/repogate/repogate.toml"))
    assert str(caught.value) == (
        "/etc/repogate/repogate.toml: clients[0].addresses[0]: 42 is not a string"
    )
    assert isinstance(caught.value, RepogateError)
    assert caught.value.source == "/etc/repogate/repogate.toml"


def test_too_many_bad_entries_are_summarised(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["addresses"] = [f"10.0.0.{n}/8" for n in range(1, 26)]
    found = paths(config_dict)
    assert len(found) == 21
    assert found[:20] == [f"clients[0].addresses[{n}]" for n in range(20)]
    assert problems(config_dict)[-1] == "clients[0].addresses: and 5 more invalid entries"


# --- unknown keys, with did-you-mean ---


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d.__setitem__("destination", {}),
            "destination: unknown key (did you mean 'destinations'?)",
        ),
        (
            lambda d: d["agent"].__setitem__("tabel", "x"),
            "agent.tabel: unknown key (did you mean 'table'?)",
        ),
        (
            lambda d: d["agent"].__setitem__("min_client_prefix_4", 8),
            "agent.min_client_prefix_4: unknown key (did you mean 'min_client_prefix_v4'?)",
        ),
        (
            lambda d: d["destinations"]["bitbucket"].__setitem__("port", [22]),
            "destinations.bitbucket.port: unknown key (did you mean 'ports'?)",
        ),
        (
            lambda d: d["clients"][1].__setitem__("adresses", []),
            "clients[1].adresses: unknown key (did you mean 'addresses'?)",
        ),
        (
            lambda d: d["clients"][0].__setitem__("colour", "red"),
            "clients[0].colour: unknown key",
        ),
    ],
)
def test_unknown_keys(
    config_dict: dict[str, Any], edit: Callable[[dict[str, Any]], None], expected: str
) -> None:
    edit(config_dict)
    assert expected in problems(config_dict)


def test_misspelt_required_key_reports_both(config_dict: dict[str, Any]) -> None:
    group = config_dict["clients"][1]
    group["adresses"] = group.pop("addresses")
    assert problems(config_dict) == [
        "clients[1].adresses: unknown key (did you mean 'addresses'?)",
        "clients[1].addresses: is required",
    ]


# --- client groups ---


def test_duplicate_group_names(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][1]["name"] = "office"
    assert problems(config_dict) == ["clients[1].name: 'office' is already used by clients[0]"]


@pytest.mark.parametrize("name", ["1office", "of fice", "office!", "", "a" * 33, "_x", "ÄÖ"])
def test_invalid_group_names(config_dict: dict[str, Any], name: str) -> None:
    config_dict["clients"][0]["name"] = name
    found = problems(config_dict)
    assert len(found) == 1
    assert found[0].startswith("clients[0].name: ")


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda d: d["clients"][0].__setitem__("name", "office\n"), "clients[0].name"),
        (lambda d: d["agent"].__setitem__("table", "repogate\n"), "agent.table"),
        (
            lambda d: d.__setitem__("destinations", {"bb\n": d["destinations"]["bitbucket"]}),
            "destinations.bb\n",
        ),
    ],
)
def test_names_with_a_trailing_newline_are_refused(
    config_dict: dict[str, Any], edit: Callable[[dict[str, Any]], None], path: str
) -> None:
    edit(config_dict)
    assert paths(config_dict) == [path]


def test_longest_group_name_is_accepted(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["name"] = "a" * 32
    assert parse_config(config_dict).clients[0].name == "a" * 32


def test_unknown_client_type(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["type"] = "ldap"
    (found,) = problems(config_dict)
    assert found.startswith("clients[0].type: 'ldap' is not a client type (static")


def test_missing_client_type_names_the_key(config_dict: dict[str, Any]) -> None:
    del config_dict["clients"][0]["type"]
    assert paths(config_dict) == ["clients[0].type"]


@pytest.mark.parametrize(
    ("clients", "expected"),
    [
        (None, "clients: at least one client group is required"),
        ([], "clients: at least one client group is required"),
        ({"name": "x"}, "clients: must be an array of tables ([[clients]])"),
        (["office"], "clients[0]: must be a table"),
    ],
)
def test_clients_shape(config_dict: dict[str, Any], clients: object, expected: str) -> None:
    if clients is None:
        del config_dict["clients"]
    else:
        config_dict["clients"] = clients
    assert problems(config_dict) == [expected]


def test_empty_address_list(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["addresses"] = []
    assert problems(config_dict) == ["clients[0].addresses: must not be empty"]


def test_addresses_not_a_list(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][0]["addresses"] = "10.0.0.1"
    assert problems(config_dict) == ["clients[0].addresses: must be a list, not a string"]


# --- the broadest client network ---


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (
            "0.0.0.0/0",
            "'0.0.0.0/0' is broader than /8 (the limit set by agent.min_client_prefix_v4)",
        ),
        ("::/0", "'::/0' is broader than /32 (the limit set by agent.min_client_prefix_v6)"),
        (
            "8.0.0.0/7",
            "'8.0.0.0/7' is broader than /8 (the limit set by agent.min_client_prefix_v4)",
        ),
        (
            "2001:db8::/31",
            "'2001:db8::/31' is broader than /32 (the limit set by agent.min_client_prefix_v6)",
        ),
    ],
)
def test_client_networks_broader_than_the_limit(
    config_dict: dict[str, Any], address: str, expected: str
) -> None:
    config_dict["clients"][1]["addresses"] = ["10.30.0.0/24", address]
    assert problems(config_dict) == [f"clients[1].addresses[1]: {expected}"]


def test_limit_itself_is_accepted(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][1]["addresses"] = ["10.0.0.0/8", "2001:db8::/32"]
    assert len(parse_config(config_dict).clients[1].entries) == 2


def test_lowered_limit_accepts_a_slash_7(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][1]["addresses"] = ["8.0.0.0/7"]
    config_dict["agent"]["min_client_prefix_v4"] = 4
    assert parse_config(config_dict).clients[1].entries[0].text == "8.0.0.0/7"


def test_lowered_limit_still_refuses_everything(config_dict: dict[str, Any]) -> None:
    config_dict["clients"][1]["addresses"] = ["0.0.0.0/0"]
    config_dict["agent"]["min_client_prefix_v4"] = 4
    assert problems(config_dict) == [
        "clients[1].addresses[0]: '0.0.0.0/0' is broader than /4 "
        "(the limit set by agent.min_client_prefix_v4)"
    ]


def test_client_limits_do_not_apply_to_destinations(config_dict: dict[str, Any]) -> None:
    config_dict["agent"] = {"min_client_prefix_v4": 16}
    config_dict["destinations"]["bitbucket"]["networks"] = ["104.0.0.0/8"]
    assert parse_config(config_dict).destinations["bitbucket"].entries[0].prefixlen == 8


@pytest.mark.parametrize("network", ["0.0.0.0/0", "104.0.0.0/6", "::/0", "2400::/12"])
def test_destinations_broader_than_a_typo_limit_are_refused(
    config_dict: dict[str, Any], network: str
) -> None:
    config_dict["destinations"]["bitbucket"]["networks"] = [network]
    with pytest.raises(ConfigError) as caught:
        parse_config(config_dict)
    assert str(caught.value) == (
        f"destinations.bitbucket.networks[0]: {network!r} is broader than "
        f"/{8 if '.' in network else 16} (a destination this broad would gate unrelated traffic)"
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("min_client_prefix_v4", 33, "agent.min_client_prefix_v4: 33 is outside 0-32"),
        ("min_client_prefix_v6", 129, "agent.min_client_prefix_v6: 129 is outside 0-128"),
        (
            "min_client_prefix_v4",
            True,
            "agent.min_client_prefix_v4: must be an integer, not a boolean",
        ),
        (
            "min_client_prefix_v4",
            "8",
            "agent.min_client_prefix_v4: must be an integer, not a string",
        ),
        ("table", 5, "agent.table: must be a string, not an integer"),
        ("table", "", "agent.table: must not be empty"),
        (
            "state_dir",
            "var/lib/repogate",
            "agent.state_dir: 'var/lib/repogate' must be an absolute path",
        ),
        ("hooks", ["input"], "agent.hooks[0]: 'input' is not one of: forward, output"),
        ("hooks", ["forward", "forward"], "agent.hooks[1]: 'forward' is listed twice"),
        ("hooks", [], "agent.hooks: needs at least one hook"),
        ("hooks", "forward", "agent.hooks: must be a list, not a string"),
    ],
)
def test_agent_errors(config_dict: dict[str, Any], key: str, value: object, expected: str) -> None:
    config_dict["agent"][key] = value
    assert problems(config_dict) == [expected]


@pytest.mark.parametrize("table", ["1gate", "re pogate", "gate;flush", "a" * 65, "tbl.x"])
def test_invalid_table_names(config_dict: dict[str, Any], table: str) -> None:
    config_dict["agent"]["table"] = table
    found = problems(config_dict)
    assert len(found) == 1
    assert found[0].startswith(f"agent.table: {table!r} is not a valid table name")


def test_agent_not_a_table(config_dict: dict[str, Any]) -> None:
    config_dict["agent"] = "repogate"
    assert problems(config_dict) == ["agent: must be a table"]


# --- destinations ---


def test_destination_without_networks(config_dict: dict[str, Any]) -> None:
    del config_dict["destinations"]["bitbucket"]["networks"]
    assert problems(config_dict) == ["destinations.bitbucket: needs networks, hosts or a preset"]


def test_destination_with_empty_networks(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"]["bitbucket"]["networks"] = []
    assert problems(config_dict) == ["destinations.bitbucket.networks: must not be empty"]


def test_destination_with_empty_ports(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"]["bitbucket"]["ports"] = []
    assert problems(config_dict) == [
        "destinations.bitbucket.ports: must be a non-empty list of port numbers"
    ]


def test_destination_without_ports(config_dict: dict[str, Any]) -> None:
    # Regression: it was accepted with ports=(), and nft refused the empty port set.
    del config_dict["destinations"]["bitbucket"]["ports"]
    assert problems(config_dict) == ["destinations.bitbucket.ports: is required"]


def test_no_destinations(config_dict: dict[str, Any]) -> None:
    del config_dict["destinations"]
    assert problems(config_dict) == ["destinations: at least one destination is required"]


def test_empty_destinations(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"] = {}
    assert problems(config_dict) == ["destinations: at least one destination is required"]


@pytest.mark.parametrize("name", ["bit bucket", "9bb", "b" * 33])
def test_invalid_destination_names(config_dict: dict[str, Any], name: str) -> None:
    config_dict["destinations"] = {name: config_dict["destinations"]["bitbucket"]}
    found = problems(config_dict)
    assert len(found) == 1
    assert found[0].startswith(f"destinations.{name}: {name!r} is not a valid name")


def test_destination_not_a_table(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"]["bitbucket"] = ["104.192.136.0/21"]
    assert "destinations.bitbucket: must be a table" in problems(config_dict)


# --- ports ---


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (0, "0 is outside 1-65535"),
        (65536, "65536 is outside 1-65535"),
        (-22, "-22 is outside 1-65535"),
        (True, "True is not a port number"),
        ("22", "'22' is not a port number"),
        (22.0, "22.0 is not a port number"),
    ],
)
def test_bad_destination_ports(config_dict: dict[str, Any], port: object, message: str) -> None:
    config_dict["destinations"]["bitbucket"]["ports"] = [22, port]
    assert problems(config_dict) == [f"destinations.bitbucket.ports[1]: {message}"]


def test_port_extremes_are_accepted(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"]["bitbucket"]["ports"] = [1, 65535]
    assert parse_config(config_dict).destinations["bitbucket"].ports == (1, 65535)


def test_duplicate_port(config_dict: dict[str, Any]) -> None:
    config_dict["destinations"]["bitbucket"]["ports"] = [22, 443, 22]
    assert problems(config_dict) == ["destinations.bitbucket.ports[2]: 22 is listed twice"]


# --- rules ---


def _rule(config_dict: dict[str, Any], **rule: object) -> dict[str, Any]:
    config_dict["rules"] = [rule]
    return config_dict


def test_rule_naming_unknown_group(config_dict: dict[str, Any]) -> None:
    data = _rule(config_dict, clients=["ofice"], destinations=["bitbucket"])
    assert problems(data) == [
        "rules[0].clients[0]: 'ofice' is not a defined client group (did you mean 'office'?)"
    ]


def test_rule_naming_unknown_destination(config_dict: dict[str, Any]) -> None:
    data = _rule(config_dict, clients=["vpn"], destinations=["bitbuckt"])
    assert problems(data) == [
        "rules[0].destinations[0]: 'bitbuckt' is not a defined destination "
        "(did you mean 'bitbucket'?)"
    ]


def test_rule_naming_a_far_off_name_has_no_suggestion(config_dict: dict[str, Any]) -> None:
    data = _rule(config_dict, clients=["zzz"], destinations=["bitbucket"])
    assert problems(data) == ["rules[0].clients[0]: 'zzz' is not a defined client group"]


def test_rule_port_not_offered(config_dict: dict[str, Any]) -> None:
    data = _rule(config_dict, clients=["vpn"], destinations=["bitbucket"], ports=[22, 80])
    assert problems(data) == ["rules[0].ports[1]: 80 is not a port of bitbucket (22, 443)"]


def test_rule_ports_checked_like_destination_ports(config_dict: dict[str, Any]) -> None:
    data = _rule(config_dict, clients=["vpn"], destinations=["bitbucket"], ports=[22, 22, 0])
    assert problems(data) == [
        "rules[0].ports[1]: 22 is listed twice",
        "rules[0].ports[2]: 0 is outside 1-65535",
    ]


def test_rule_missing_and_empty_lists(config_dict: dict[str, Any]) -> None:
    config_dict["rules"] = [{"clients": []}, {"destinations": ["bitbucket"], "clients": ["vpn"]}]
    assert problems(config_dict) == [
        "rules[0].destinations: is required",
        "rules[0].clients: must name at least one",
    ]


def test_rule_with_unknown_key(config_dict: dict[str, Any]) -> None:
    data = _rule(config_dict, clients=["vpn"], destinations=["bitbucket"], port=[22])
    assert problems(data) == ["rules[0].port: unknown key (did you mean 'ports'?)"]


def test_rules_not_a_list(config_dict: dict[str, Any]) -> None:
    config_dict["rules"] = {"clients": ["vpn"]}
    assert problems(config_dict) == ["rules: must be an array of tables ([[rules]])"]


# --- all problems in one error ---


def test_all_problems_are_reported_together(config_dict: dict[str, Any]) -> None:
    config_dict["agent"]["table"] = "9gate"
    config_dict["agent"]["hooks"] = ["prerouting"]
    config_dict["destinations"]["bitbucket"]["ports"] = [22, 70000]
    config_dict["clients"][0]["addresses"][1] = "10.9.8.777"
    config_dict["clients"][1]["name"] = "office"
    config_dict["rules"] = [{"clients": ["nobody"], "destinations": ["bitbucket"]}]
    assert paths(config_dict) == [
        "agent.table",
        "agent.hooks[0]",
        "destinations.bitbucket.ports[1]",
        "clients[0].addresses[1]",
        "clients[1].name",
        "rules[0].clients[0]",
    ]


def test_missing_destinations_reported_with_other_problems(config_dict: dict[str, Any]) -> None:
    config_dict["agent"]["table"] = "9gate"
    config_dict["destinations"] = {}
    assert paths(config_dict) == ["agent.table", "destinations"]


def test_empty_hooks_reported_with_other_problems(config_dict: dict[str, Any]) -> None:
    config_dict["agent"]["table"] = "9gate"
    config_dict["agent"]["hooks"] = []
    assert paths(config_dict) == ["agent.table", "agent.hooks"]


def test_config_problem_str() -> None:
    assert str(ConfigProblem("a.b", "bad")) == "a.b: bad"
    assert str(ConfigProblem("", "file not found")) == "file not found"


# --- load_config and config_path ---


def test_load_config_from_toml(write_config: Callable[[str], Path], base_toml: str) -> None:
    path = write_config(base_toml)
    config = load_config(path)
    assert config.path == path
    assert [group.name for group in config.clients] == ["office", "vpn"]


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.source == str(missing)
    assert caught.value.problems[0].message.startswith("file not found")


def test_load_config_invalid_toml(write_config: Callable[[str], Path]) -> None:
    path = write_config("[agent\ntable = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'# caf\xe9\n[agent]\ntable = "x"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_config_path_prefers_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOGATE_CONFIG", "/from/env.toml")
    assert config_path("/explicit.toml") == Path("/explicit.toml")


def test_config_path_uses_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOGATE_CONFIG", "/from/env.toml")
    assert config_path(None) == Path("/from/env.toml")


def test_config_path_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path(None) == DEFAULT_CONFIG_PATH == Path("/etc/repogate/repogate.toml")
    monkeypatch.setenv("REPOGATE_CONFIG", "")
    assert config_path(None) == DEFAULT_CONFIG_PATH


# --- grants ---


def _two_destinations(config_dict: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(config_dict)
    data["destinations"]["mirror"] = {"networks": ["192.0.2.0/24"], "ports": [443, 7999]}
    return data


def test_grants_without_rules_allow_all_to_all(config_dict: dict[str, Any]) -> None:
    config = parse_config(_two_destinations(config_dict))
    assert config.grants() == (
        Grant("office", "bitbucket", (22, 443)),
        Grant("office", "mirror", (443, 7999)),
        Grant("vpn", "bitbucket", (22, 443)),
        Grant("vpn", "mirror", (443, 7999)),
    )


def test_grants_follow_rules_only(config_dict: dict[str, Any]) -> None:
    data = _two_destinations(config_dict)
    data["rules"] = [{"clients": ["vpn"], "destinations": ["bitbucket"]}]
    assert parse_config(data).grants() == (Grant("vpn", "bitbucket", (22, 443)),)


def test_grants_narrow_ports_per_destination(config_dict: dict[str, Any]) -> None:
    data = _two_destinations(config_dict)
    # 22 is offered by bitbucket only, 7999 by mirror only: each gets its own share.
    data["rules"] = [
        {"clients": ["office", "vpn"], "destinations": ["bitbucket", "mirror"], "ports": [22, 7999]}
    ]
    assert parse_config(data).grants() == (
        Grant("office", "bitbucket", (22,)),
        Grant("office", "mirror", (7999,)),
        Grant("vpn", "bitbucket", (22,)),
        Grant("vpn", "mirror", (7999,)),
    )


def test_grants_union_overlapping_rules(config_dict: dict[str, Any]) -> None:
    config_dict["rules"] = [
        {"clients": ["office"], "destinations": ["bitbucket"], "ports": [22]},
        {"clients": ["office"], "destinations": ["bitbucket"], "ports": [443]},
        {"clients": ["vpn"], "destinations": ["bitbucket"], "ports": [443]},
    ]
    assert parse_config(config_dict).grants() == (
        Grant("office", "bitbucket", (22, 443)),
        Grant("vpn", "bitbucket", (443,)),
    )


def test_group_lookup(base_config: Config) -> None:
    assert base_config.group("vpn").name == "vpn"
    with pytest.raises(StopIteration):
        base_config.group("nobody")


# --- [metrics] ---


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        (None, "127.0.0.1", 10419),  # the default
        ("", None, 10419),  # documented as off
        ("192.0.2.10:9100", "192.0.2.10", 9100),
        ("[::1]:0", "::1", 0),
    ],
)
def test_metrics_listen(
    config_dict: dict[str, Any], listen: str | None, host: str | None, port: int
) -> None:
    if listen is not None:
        config_dict["metrics"] = {"listen": listen}
    metrics = parse_config(config_dict).metrics
    assert (metrics.host, metrics.port) == (host, port)


def test_metrics_off_from_toml(write_config: Callable[[str], Path], base_toml: str) -> None:
    config = load_config(write_config(base_toml + '\n[metrics]\nlisten = ""\n'))
    assert config.metrics.host is None


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("localhost:10419", "metrics.listen: 'localhost:10419' is not ADDRESS:PORT"),
        ("127.0.0.1:70000", "metrics.listen: port 70000 is outside 0-65535"),
        (" ", "metrics.listen: ' ' is not ADDRESS:PORT"),
        (10419, "metrics.listen: must be a string, not an integer"),
    ],
)
def test_metrics_listen_errors(config_dict: dict[str, Any], listen: object, expected: str) -> None:
    config_dict["metrics"] = {"listen": listen}
    (problem,) = problems(config_dict)
    assert problem.startswith(expected)


def test_metrics_paths_are_relative_to_the_config(config_dict: dict[str, Any]) -> None:
    config_dict["metrics"] = {"tls_cert_file": "tls/cert.pem", "tls_key_file": "/etc/key.pem"}
    metrics = parse_config(config_dict, Path("/etc/repogate/repogate.toml")).metrics
    assert metrics.tls_cert_file == Path("/etc/repogate/tls/cert.pem")
    assert metrics.tls_key_file == Path("/etc/key.pem")
