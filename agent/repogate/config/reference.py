"""The config reference: every key, its default and its meaning, in one place.

README's "Configuration reference" table and the repogate.toml(5) man page are
generated from this (packaging/manpages.py, `make reference`), and a test checks
that every key the parser accepts is described here, so the documentation cannot
drift from what `repogate check` takes. Markdown in the cells (backticks) is kept:
the man page generator turns it into bold.
"""

from __future__ import annotations

from typing import NamedTuple


class Key(NamedTuple):
    key: str  # a dotted path; `[]` marks an array of tables (clients[].name)
    default: str
    meaning: str


KEYS: tuple[Key, ...] = (
    Key(
        "`agent.table`",
        '`"repogate"`',
        (
            "the `inet` table repogate owns; a same-named table without its owner mark is "
            "refused (`sync --adopt` takes it over)"
        ),
    ),
    Key(
        "`agent.state_dir`",
        '`"/var/lib/repogate"`',
        "where state is kept (absolute path)",
    ),
    Key(
        "`agent.hooks`",
        '`["forward"]`',
        "`forward` gates routed traffic; `output` also gates this host's own",
    ),
    Key(
        "`agent.min_client_prefix_v4`",
        "`8`",
        "broadest IPv4 client network accepted, so a stray `0.0.0.0/0` never opens the gate",
    ),
    Key(
        "`agent.min_client_prefix_v6`",
        "`32`",
        "the same for IPv6",
    ),
    Key(
        "`agent.on_stop`",
        '`"keep"`',
        "`keep`: rules stay when the daemon stops (fail closed); `remove`: delete the table",
    ),
    Key(
        "`agent.verify_interval`",
        '`"30s"`',
        (
            "the longest time between reads of the ruleset generation id (2 s unless "
            "lower) when nf_tables notifications are unavailable; drift is found at once "
            "from them, and the table is never re-read on a timer"
        ),
    ),
    Key(
        "`agent.max_stale`",
        '`"24h"`',
        "how long a failing source's last known good entries stay enforced",
    ),
    Key(
        "`agent.log_format`",
        '`"text"`',
        "`text`, or `json` (one object per line, with the event's fields)",
    ),
    Key(
        "`agent.egress_interfaces`",
        "`[]`",
        "interfaces whose addresses `status` reports; empty: those with a default route",
    ),
    Key(
        "`agent.max_shrink`",
        "`0.5`",
        'a refresh shrinking a list by more than this share (or `"50%"`) is held back',
    ),
    Key(
        "`resolver.nameservers`",
        "`[]`",
        "DNS servers (IP addresses); empty: `/etc/resolv.conf`",
    ),
    Key(
        "`resolver.port`",
        "`53`",
        "the port the DNS servers answer on",
    ),
    Key(
        "`resolver.timeout`",
        '`"2s"`',
        "per query, with one retry",
    ),
    Key(
        "`metrics.listen`",
        '`"127.0.0.1:10419"`',
        'the Prometheus endpoint; `""` turns it off',
    ),
    Key(
        "`metrics.tls_cert_file`, `tls_key_file`",
        "none",
        "serve metrics over TLS",
    ),
    Key(
        "`metrics.basic_auth_user`, `basic_auth_password_file`",
        "none",
        "require basic auth for metrics",
    ),
    Key(
        "`audit.path`",
        "none",
        "also append the audit trail (one JSON line per change) here; reopened on reload",
    ),
    Key(
        "`destinations.NAME.preset`",
        "none",
        "`bitbucket`: its hosts, ports 22 and 443, and Atlassian's feed",
    ),
    Key(
        "`destinations.NAME.hosts`",
        "`[]`",
        "names resolved (A, AAAA, at each TTL) and unioned with `networks`",
    ),
    Key(
        "`destinations.NAME.linger`",
        '`"1h"`',
        "how long an address that left DNS stays allowed",
    ),
    Key(
        "`destinations.NAME.feed_url`",
        "the preset's",
        'the IP-range feed (with a preset); `feed_ca_file`, `feed_interval` (`"6h"`)',
    ),
    Key(
        "`destinations.NAME.min_refresh`, `max_refresh`",
        '`"30s"`, `"1h"`',
        "bounds on how soon its DNS names are asked again (each answer's TTL, clamped)",
    ),
    Key(
        "`destinations.NAME.networks`",
        "required",
        "addresses or CIDRs, IPv4 and IPv6",
    ),
    Key(
        "`destinations.NAME.ports`",
        "required",
        "TCP ports, 1-65535",
    ),
    Key(
        "`clients[].name`",
        "required",
        "letters, digits, `_`, `-`; at most 32 characters",
    ),
    Key(
        "`clients[].type`",
        "required",
        (
            "`static` (`addresses`), `file` (`path`, `format`, `json_path`, `interval`), "
            '`http` (`url`, `format`, `json_path`, `interval` (`"5m"`), `token_file`, '
            "`ca_file`, `timeout`, `max_bytes`, `allow_insecure`), `dns` (`names`, "
            '`min_refresh` (`"30s"`), `max_refresh` (`"1h"`), '
            "`max_addresses` (8, per name and family)), or a "
            'device group: `wireguard` (`interface`, `max_handshake_age` (`"3m"`)), `openvpn`'
            " (`status_file`, `interface`, `management`: its unix socket, so a client that "
            "stops qualifying is disconnected at once), `dhcp` (`leases`, `format` "
            "`dnsmasq`/`kea`), "
            '`neighbours` (`interfaces`), each with `inventory` and `interval` (`"2s"`)'
        ),
    ),
    Key(
        "`inventories[]`",
        "none",
        (
            "`name`, `type`: `file` (`path`, `format`), `http` (`url`, `format`, "
            "`token_file`, `ca_file`, `timeout`, `max_bytes`, `allow_insecure`), `intune` "
            "(`tenant`, `client_id`, `client_secret_file`, `compliant_states` "
            '(`["compliant"]`), `authority`, `graph`), `jamf` (`url`, `client_id`, '
            "`client_secret_file`, `compliant_group`, `page_size` (100)), `fleet` (`url`, "
            "`token_file`, `policies`, `page_size`); the MDM types also take `ca_file`, "
            "`timeout`, `max_bytes`. All: `max_age`, `max_stale` (the agent's), `interval` "
            '(`"10s"` file, `"5m"` http, `"10m"` MDM)'
        ),
    ),
    Key(
        "`enrolments[]`",
        "none",
        (
            "`inventory`, `path`: a CSV joining each device (serial) to its `wireguard` keys,"
            " `openvpn` names and `macs`"
        ),
    ),
    Key(
        "`egress.addresses`",
        "`[]`",
        "the addresses Bitbucket's IP allowlist holds; `status` checks what leaves against them",
    ),
    Key(
        "`egress.snat`",
        "`false`",
        (
            "translate admitted flows to protected destinations to the first declared address"
            " of each family (a `nat` chain in the owned table)"
        ),
    ),
    Key(
        "`probes[]`",
        "none",
        (
            "`name`, `type`: `ssh` (`target` `HOST:PORT`, `known_hosts`) or `git-https` "
            '(`url`, `token_file`, `ca_file`); `interval` (`"1m"`), `timeout` (`"10s"`)'
        ),
    ),
    Key(
        "`why.listen`",
        "none (off)",
        (
            '`"ADDRESS:PORT"` or a list: a plain-text page answering each device with its own'
            " verdict and reason"
        ),
    ),
    Key(
        "`clients[].max_stale`, `clients[].max_shrink`",
        "the agent's",
        "per group overrides; device groups' shrinks are never held back unless they "
        "set `max_shrink` (a device that stops qualifying loses access at once)",
    ),
    Key(
        "`clients[].interfaces`",
        "`[]` (any)",
        (
            "admit the group's addresses only for packets arriving on these interfaces "
            "(`iifname`), so a host on another network cannot borrow them; applies to "
            "forwarded traffic"
        ),
    ),
    Key(
        "`rules[].clients`, `rules[].destinations`",
        "required",
        "names of client groups and destinations",
    ),
    Key(
        "`rules[].ports`",
        "all of the destination's",
        "narrows the destination's ports",
    ),
)


def markdown_table() -> str:
    """The README table, exactly."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {k.key} | {k.default} | {k.meaning} |" for k in KEYS]
    return "\n".join(lines) + "\n"
