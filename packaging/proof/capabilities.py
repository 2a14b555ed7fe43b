"""Capability names for the process-identity check, read from /proc/<pid>/status.

The daemon must hold exactly cap_net_admin; /proc shows bit masks, and the
check's evidence names every bit set (unknown ones as such, never dropped) so a
FAIL says which capability is too many.
"""

from __future__ import annotations

CAPABILITIES = (  # capability(7) numbers: the index is the bit
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
)
CAP_NET_ADMIN = 1 << CAPABILITIES.index("net_admin")


def parse_status(text: str) -> dict[str, str]:
    """/proc/<pid>/status as a dict."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def capability_names(mask: int) -> str:
    names = [f"cap_{name}" for bit, name in enumerate(CAPABILITIES) if mask & (1 << bit)]
    unknown = mask >> len(CAPABILITIES)
    if unknown:
        names.append(f"unknown(0x{unknown << len(CAPABILITIES):x})")
    return ",".join(names) or "none"
