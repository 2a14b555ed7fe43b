"""Render the desired table in nft's own syntax, for `repogate render` and `nft -c -f`."""

from __future__ import annotations

from repogate.addresses import element_order
from repogate.model import DesiredState, SetSpec, SnatSpec
from repogate.nft import names
from repogate.nft.builders import FAMILY
from repogate.nft.layout import DestinationChain, GateRule, gate_layout
from repogate.nft.names import jump_comment, rule_comment

BOOT_HEADER = """\
# Written by repogate: the table it last enforced. Include it from /etc/nftables.conf
# (include "/var/lib/repogate/*.nft") so the gate is up before any network at boot;
# the daemon takes the table over when it starts. Do not edit: it is rewritten.
"""


def render_boot(desired: DesiredState) -> str:
    """A self-contained `nft -f` file: replaces the table if it exists, creates it if not."""
    table = f"{FAMILY} {desired.table}"
    return f"{BOOT_HEADER}table {table}\ndelete table {table}\n{render(desired)}"


def render(desired: DesiredState) -> str:
    digest = desired.rules_digest
    lines = [f"table {FAMILY} {desired.table} {{"]
    if desired.owner:
        lines += [f"\tcounter {names.OWNER_COUNTER} {{", f'\t\tcomment "{desired.owner}"', "\t}"]
    for counter in desired.counters:
        lines += [f"\tcounter {counter} {{", "\t}"]
    for spec in desired.sets.values():
        lines += _render_set(spec)
    layout = gate_layout(desired.rules)
    for chain in layout.destinations:  # jump targets first, as the builders add them
        lines.append(f"\tchain {chain.name} {{")
        lines += [f"\t\t{_render_rule(rule, digest)}" for rule in chain.rules]
        lines.append("\t}")
    lines.append(f"\tchain {names.GATE_CHAIN} {{")
    lines += [f"\t\t{_render_dispatch(chain, digest)}" for chain in layout.destinations]
    lines.append("\t}")
    for hook in desired.hooks:
        lines += [
            f"\tchain {hook} {{",
            f"\t\ttype filter hook {hook} priority filter; policy accept;",
            *(
                f"\t\ttcp dport {_ports(ports)} jump {names.GATE_CHAIN} "
                f'comment "{jump_comment(digest)}"'
                for ports in layout.hook_ports
            ),
            "\t}",
        ]
    if desired.snat:
        lines += [
            f"\tchain {names.NAT_CHAIN} {{",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            *(f"\t\t{_render_snat(rule, digest)}" for rule in desired.snat),
            "\t}",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_snat(rule: SnatSpec, digest: str) -> str:
    protocol = "ip" if rule.family == 4 else "ip6"
    return (
        f"{protocol} daddr @{rule.destination_set} tcp dport {_ports(rule.ports)} "
        f'snat {protocol} to {rule.address} comment "{rule_comment(rule.comment, digest)}"'
    )


def _render_set(spec: SetSpec) -> list[str]:
    lines = [f"\tset {spec.name} {{", f"\t\ttype {spec.nft_type}"]
    if spec.interval:
        lines.append("\t\tflags interval")
    if spec.elements:
        lines.append(f"\t\telements = {{ {', '.join(sorted(spec.elements, key=element_order))} }}")
    lines.append("\t}")
    return lines


def _render_dispatch(chain: DestinationChain, digest: str) -> str:
    protocol = "ip" if chain.family == 4 else "ip6"
    ports = f" tcp dport {_ports(chain.ports)}" if chain.ports else ""
    return (
        f"{protocol} daddr @{chain.destination_set}{ports} jump {chain.name} "
        f'comment "{rule_comment(chain.comment, digest)}"'
    )


def _render_rule(rule: GateRule, digest: str) -> str:
    spec = rule.spec
    protocol = "ip" if spec.family == 4 else "ip6"
    parts = []
    if spec.interfaces:
        quoted = ", ".join(f'"{name}"' for name in spec.interfaces)
        parts.append(
            f"iifname {quoted}" if len(spec.interfaces) == 1 else f"iifname {{ {quoted} }}"
        )
    if spec.client_set is not None:
        parts.append(f"{protocol} saddr @{spec.client_set}")
    if rule.ports:
        parts.append(f"tcp dport {_ports(rule.ports)}")
    elif spec.verdict == "reject":
        parts.append("meta l4proto tcp")  # as builders.build_rule writes it
    parts.append(f'counter name "{spec.counter}"')
    parts.append("accept" if spec.verdict == "accept" else "reject with tcp reset")
    parts.append(f'comment "{rule_comment(spec.comment, digest)}"')
    return " ".join(parts)


def _ports(ports: tuple[int, ...]) -> str:
    return str(ports[0]) if len(ports) == 1 else f"{{ {', '.join(map(str, ports))} }}"
