"""Render the desired table in nft's own syntax, for `repogate render` and `nft -c -f`."""

from __future__ import annotations

from repogate.addresses import element_order
from repogate.model import DesiredState, RuleSpec, SetSpec, SnatSpec
from repogate.nft import names
from repogate.nft.builders import FAMILY
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
    lines.append(f"\tchain {names.GATE_CHAIN} {{")
    lines += [f"\t\t{_render_rule(rule, digest)}" for rule in desired.rules]
    lines.append("\t}")
    for hook in desired.hooks:
        lines += [
            f"\tchain {hook} {{",
            f"\t\ttype filter hook {hook} priority filter; policy accept;",
            f'\t\tjump {names.GATE_CHAIN} comment "{jump_comment(digest)}"',
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
    ports = (
        str(rule.ports[0]) if len(rule.ports) == 1 else f"{{ {', '.join(map(str, rule.ports))} }}"
    )
    return (
        f"{protocol} daddr @{rule.destination_set} tcp dport {ports} "
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


def _render_rule(rule: RuleSpec, digest: str) -> str:
    protocol = "ip" if rule.family == 4 else "ip6"
    parts = []
    if rule.interfaces:
        quoted = ", ".join(f'"{name}"' for name in rule.interfaces)
        parts.append(
            f"iifname {quoted}" if len(rule.interfaces) == 1 else f"iifname {{ {quoted} }}"
        )
    if rule.client_set is not None:
        parts.append(f"{protocol} saddr @{rule.client_set}")
    parts.append(f"{protocol} daddr @{rule.destination_set}")
    ports = (
        str(rule.ports[0]) if len(rule.ports) == 1 else f"{{ {', '.join(map(str, rule.ports))} }}"
    )
    parts.append(f"tcp dport {ports}")
    parts.append(f'counter name "{rule.counter}"')
    parts.append("accept" if rule.verdict == "accept" else "reject with tcp reset")
    parts.append(f'comment "{rule_comment(rule.comment, digest)}"')
    return " ".join(parts)
