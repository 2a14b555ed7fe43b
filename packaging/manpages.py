"""Write repogate(8) and repogate.toml(5) from their one source each.

repogate(8) comes from the argument parser (the verbs, their options and help, as
`--help` prints them); repogate.toml(5) from the config reference
(repogate.config.reference, which README's table is generated from too) and the
MDM permissions the connectors name in their errors. So the pages cannot say
something `--help` or `repogate check` would not: tests/unit/test_manpages.py fails
when a verb, an option or a config key is missing.

    PYTHONPATH=agent python3 packaging/manpages.py OUTDIR
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from repogate import __version__
from repogate.cli.main import build_parser
from repogate.config.reference import KEYS
from repogate.sources.devices.mdm.client import PERMISSION, VENDOR_NAME

DATE = datetime(2026, 11, 29, tzinfo=UTC).strftime("%Y-%m-%d")  # the release's, not the build's


def roff(text: str) -> str:
    """Escape for roff, and turn `code` into bold."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    escaped = re.sub(r"`([^`]*)`", r"\\fB\1\\fR", escaped)
    lines = escaped.split("\n")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in lines)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def verb_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {}


def options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(usage form, help) of each option and positional, --help and --config aside."""
    found = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        if "--config" in action.option_strings:
            continue
        if action.option_strings:
            form = ", ".join(action.option_strings)
            if action.nargs != 0:
                form += f" {action.metavar or action.dest.upper()}"
        else:
            form = str(action.metavar or action.dest.upper())
            if action.nargs == "*":
                form = f"[{form}...]"
        found.append((form, action.help or ""))
    return found


def repogate_8() -> str:
    parser = build_parser()
    verbs = subparsers(parser)
    helps = verb_help(parser)
    out = [
        f'.TH REPOGATE 8 "{DATE}" "repogate {__version__}" "System Administration"',
        ".SH NAME",
        "repogate \\- only approved devices reach Bitbucket: one nftables table kept in sync",
        ".SH SYNOPSIS",
        ".B repogate",
        ".I VERB",
        "[\\fB\\-\\-config\\fR \\fIPATH\\fR] [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        ".PP",
        roff(
            "repogate owns one `inet` table and keeps its sets equal to the approved clients "
            "(addresses, DNS names, HTTPS lists, or devices an inventory or MDM calls "
            "compliant while the host sees them), so forwarded TCP to Bitbucket is accepted "
            "only from them. Every change is one atomic libnftables transaction computed as "
            "a diff against the kernel; nothing else in the ruleset is touched. While the "
            "service runs, `sync`, `status`, `explain`, `devices` and `probe` ask it."
        ),
        ".SH OPTIONS",
        ".TP",
        "\\fB\\-\\-config\\fR \\fIPATH\\fR",
        roff("the config file; default: `$REPOGATE_CONFIG`, else `/etc/repogate/repogate.toml`"),
        ".SH COMMANDS",
    ]
    for name, sub in verbs.items():
        out += [".TP", f"\\fB{roff(name)}\\fR", roff(helps.get(name, ""))]
        for form, text in options(sub):
            out += [".RS", ".TP", f"\\fB{roff(form)}\\fR", roff(text), ".RE"]
    out += [
        ".SH EXIT STATUS",
        ".TP",
        "0",
        "success (for \\fBprobe\\fR: every probe asked for passed)",
        ".TP",
        "1",
        roff(
            "runtime failure: nftables refused, no CAP_NET_ADMIN, a list unreadable, a probe failed"
        ),
        ".TP",
        "2",
        "bad usage or an invalid config (every problem named by its key path)",
        ".SH ENVIRONMENT",
        ".TP",
        ".B REPOGATE_CONFIG",
        "the config file when \\fB\\-\\-config\\fR is not given",
        ".SH FILES",
        ".TP",
        ".I /etc/repogate/repogate.toml",
        "the config, see \\fBrepogate.toml\\fR(5)",
        ".TP",
        ".I /var/lib/repogate",
        roff(
            "state: last known good entries, the instance id, `ruleset.nft` (the table "
            "last enforced), `audit.jsonl`"
        ),
        ".TP",
        ".I /usr/share/repogate",
        roff(
            "the Grafana dashboard, Prometheus alert rules and their tests, a scrape "
            "example, Bitbucket's published SSH host keys, and `nftables-include.nft` "
            "for /etc/nftables.conf"
        ),
        ".SH SEE ALSO",
        "\\fBrepogate.toml\\fR(5), \\fBnft\\fR(8), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1);",
        "/usr/share/doc/repogate/README.md",
    ]
    return "\n".join(out) + "\n"


def repogate_toml_5() -> str:
    out = [
        f'.TH REPOGATE.TOML 5 "{DATE}" "repogate {__version__}" "File Formats"',
        ".SH NAME",
        "repogate.toml \\- configuration of repogate",
        ".SH DESCRIPTION",
        roff(
            "A TOML file, `/etc/repogate/repogate.toml` by default. `repogate check` validates "
            "it and names every problem by its key path (`clients[2].inventory`); a running "
            "daemon reads it again on `systemctl reload repogate` and keeps the old one if "
            'the new one is invalid. Durations are written like `"30s"`, `"5m"`, `"1h"`, '
            '`"1d"`. Secrets are never written here: keys ending in `_file` name files.'
        ),
        ".SH KEYS",
    ]
    for key in KEYS:
        out += [".TP", f"\\fB{roff(key.key.strip('`'))}\\fR (default: {roff(key.default)})"]
        out.append(roff(key.meaning))
    out += [".SH MDM PERMISSIONS", roff("Grant each MDM's API client read access only:")]
    for vendor, text in PERMISSION.items():
        out += [".TP", f"\\fB{roff(VENDOR_NAME[vendor])}\\fR", roff(text)]
    out += [
        ".SH EXAMPLE",
        ".nf",
        roff(Path(__file__).parent.parent.joinpath("config", "repogate.toml").read_text().strip()),
        ".fi",
        ".SH SEE ALSO",
        "\\fBrepogate\\fR(8)",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    outdir = Path(argv[1] if len(argv) > 1 else "man")
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "repogate.8").write_text(repogate_8())
    (outdir / "repogate.toml.5").write_text(repogate_toml_5())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
