"""render: the desired table in nft's own syntax (for `repogate render` and `nft -c -f`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from repogate.config import Config, parse_config
from repogate.model import DesiredState
from repogate.nft.render import render

Desired = Callable[..., DesiredState]


def test_render_layout(base_config: Config, desired: Desired) -> None:
    state = desired(base_config)
    lines = render(state).splitlines()
    assert lines[0] == "table inet repogate {"
    assert lines[-1] == "}"
    assert lines[1:8] == [
        "\tcounter repogate_owner {",
        '\t\tcomment "repogate instance test0instance"',
        "\t}",
        "\tcounter allowed_bitbucket {",
        "\t}",
        "\tcounter denied_bitbucket {",
        "\t}",
    ]
    set_lines = [line.strip() for line in lines if line.startswith("\tset ")]
    assert set_lines == [f"set {name} {{" for name in state.sets]
    chains = [line.strip() for line in lines if line.startswith("\tchain ")]
    assert chains == ["chain gate {", "chain forward {"]


def test_render_rules(base_config: Config, desired: Desired) -> None:
    state = desired(base_config)
    digest = state.rules_digest
    text = render(state)
    assert (
        "\t\tip saddr @client_office_v4_addr ip daddr @dest_bitbucket_v4 tcp dport { 22, 443 } "
        f'counter name "allowed_bitbucket" accept comment "allow office to bitbucket [{digest}]"\n'
    ) in text
    assert (
        "\t\tip6 daddr @dest_bitbucket_v6 tcp dport { 22, 443 } "
        'counter name "denied_bitbucket" reject with tcp reset '
        f'comment "refuse others to bitbucket [{digest}]"\n'
    ) in text
    assert (
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f'\t\tjump gate comment "repogate [{digest}]"\n'
        "\t}\n"
    ) in text
    gate = text.split("\tchain gate {\n", 1)[1].split("\t}\n", 1)[0].splitlines()
    assert len(gate) == len(state.rules)
    assert ["reject" in line for line in gate] == [r.verdict == "reject" for r in state.rules]


def test_render_single_port_and_hooks(config_dict: dict[str, Any], desired: Desired) -> None:
    config_dict["agent"]["hooks"] = ["forward", "output"]
    config_dict["rules"] = [{"clients": ["vpn"], "destinations": ["bitbucket"], "ports": [22]}]
    text = render(desired(parse_config(config_dict)))
    assert "ip saddr @client_vpn_v4_net ip daddr @dest_bitbucket_v4 tcp dport 22 counter" in text
    assert "office" not in text.split("\tchain gate {", 1)[1]
    assert "\t\ttype filter hook output priority filter; policy accept;\n" in text


def test_render_elements_in_numeric_order(config_dict: dict[str, Any], desired: Desired) -> None:
    config_dict["clients"][1]["addresses"] = [
        "10.30.0.0/24",
        "9.0.0.0/8",
        "10.4.0.0/16",
        "2001:db8:a::/48",
        "2001:db8:9::/48",
    ]
    text = render(desired(parse_config(config_dict)))
    assert "\t\telements = { 9.0.0.0/8, 10.4.0.0/16, 10.30.0.0/24 }\n" in text
    assert "\t\telements = { 2001:db8:9::/48, 2001:db8:a::/48 }\n" in text


def test_render_empty_sets_have_no_elements_line(base_config: Config, desired: Desired) -> None:
    text = render(desired(base_config))
    assert "\tset client_vpn_v6_net {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t}\n" in text
    assert "elements = {  }" not in text


def test_render_is_deterministic(config_dict: dict[str, Any], desired: Desired) -> None:
    config_dict["clients"][0]["addresses"] += [f"10.9.9.{n}" for n in range(50)]
    config = parse_config(config_dict)
    assert render(desired(config)) == render(desired(config))
