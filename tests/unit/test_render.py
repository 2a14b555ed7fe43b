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
    assert chains == [  # jump targets first, as the builders add them
        "chain gate_bitbucket_v4 {",
        "chain gate_bitbucket_v6 {",
        "chain gate {",
        "chain forward {",
    ]


def chain_lines(text: str, name: str) -> list[str]:
    return text.split(f"\tchain {name} {{\n", 1)[1].split("\t}\n", 1)[0].splitlines()


def test_render_rules(base_config: Config, desired: Desired) -> None:
    state = desired(base_config)
    digest = state.rules_digest
    text = render(state)
    assert chain_lines(text, "forward") == [
        "\t\ttype filter hook forward priority filter; policy accept;",
        f'\t\ttcp dport 22 jump gate comment "repogate [{digest}]"',
        f'\t\ttcp dport 443 jump gate comment "repogate [{digest}]"',
    ]
    assert chain_lines(text, "gate") == [  # the ports are all the hook's: no port test
        "\t\tip daddr @dest_bitbucket_v4 jump gate_bitbucket_v4 "
        f'comment "to gate_bitbucket_v4 [{digest}]"',
        "\t\tip6 daddr @dest_bitbucket_v6 jump gate_bitbucket_v6 "
        f'comment "to gate_bitbucket_v6 [{digest}]"',
    ]
    v6 = chain_lines(text, "gate_bitbucket_v6")
    assert v6[0] == (
        '\t\tip6 saddr @client_office_v6_addr counter name "allowed_bitbucket" accept '
        f'comment "allow office to bitbucket [{digest}]"'
    )
    assert v6[-1] == (  # terminal: every packet that got here is to bitbucket on its ports
        '\t\tmeta l4proto tcp counter name "denied_bitbucket" reject with tcp reset '
        f'comment "refuse others to bitbucket [{digest}]"'
    )
    rules = [r for r in state.rules if r.family == 6]
    assert ["reject" in line for line in v6] == [r.verdict == "reject" for r in rules]
    assert "daddr" not in "".join(v6 + chain_lines(text, "gate_bitbucket_v4"))


def test_render_single_port_and_hooks(config_dict: dict[str, Any], desired: Desired) -> None:
    config_dict["agent"]["hooks"] = ["forward", "output"]
    config_dict["rules"] = [{"clients": ["vpn"], "destinations": ["bitbucket"], "ports": [22]}]
    text = render(desired(parse_config(config_dict)))
    # A grant narrower than the destination's ports keeps its own port test.
    assert '\t\tip saddr @client_vpn_v4_net tcp dport 22 counter name "allowed_bitbucket"' in text
    assert "office" not in text.split("\tchain gate_bitbucket_v4 {", 1)[1]
    assert "\t\ttype filter hook output priority filter; policy accept;\n" in text
    assert chain_lines(text, "output")[1].startswith("\t\ttcp dport 22 jump gate comment")


def test_render_many_ports_and_a_narrower_destination(
    config_dict: dict[str, Any], desired: Desired
) -> None:
    """More than three ports: one set lookup in the hook chain; a destination on fewer
    ports than the hook tests is jumped to only on its own."""
    config_dict["destinations"]["mirror"] = {"networks": ["192.0.2.0/24"], "ports": [80, 8443]}
    config_dict["destinations"]["bitbucket"]["ports"] = [22, 443, 7999]
    text = render(desired(parse_config(config_dict)))
    assert chain_lines(text, "forward")[1].startswith(
        "\t\ttcp dport { 22, 80, 443, 7999, 8443 } jump gate comment"
    )
    gate = chain_lines(text, "gate")
    assert gate[0].startswith(
        "\t\tip daddr @dest_bitbucket_v4 tcp dport { 22, 443, 7999 } jump gate_bitbucket_v4 "
    )
    assert gate[2].startswith("\t\tip daddr @dest_mirror_v4 tcp dport { 80, 8443 } jump gate_")
    assert "tcp dport" not in "".join(chain_lines(text, "gate_mirror_v6"))


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
