"""The SSH probe: connect, read the banner, fetch the host key, compare with known_hosts.

The banner is read on a plain socket (so a refused, reset or silent port is named
precisely); the host key is fetched with OpenSSH's own `ssh-keyscan`, which runs
the key exchange and verifies the server's signature over it, then closes
without authenticating. A well-kept tool rather than a hand-written SSH client.
A key that known_hosts does not list for the host is its own failure: someone
may be in the path. Nothing from the network reaches a shell: argument lists only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from repogate.config.schema import Probe
from repogate.probes import ProbeFailedError
from repogate.probes.known_hosts import Entry, HostKey, host_names, parse_key, read_known_hosts

KEY_TYPES = "ed25519,ecdsa,rsa"
MAX_BANNER = 255  # RFC 4253 4.2


def probe_ssh(probe: Probe) -> str:
    host, port = split_target(probe.target)
    banner = read_banner(host, port, probe.timeout)
    assert probe.known_hosts is not None
    known = read_known_hosts(probe.known_hosts)
    keys = scan_keys(host, port, probe.timeout)
    names = host_names(host, port)
    listed = [entry for entry in known if any(entry.matches(name) for name in names)]
    revoked = [k for k in keys if any(e.revoked and e.key == k for e in known)]
    if revoked:
        raise ProbeFailedError(
            f"{probe.target} presented a REVOKED host key ({revoked[0].label}) listed as "
            f"@revoked in {probe.known_hosts}"
        )
    # Bitbucket publishes its keys for bitbucket.org; ssh.bitbucket.org and altssh on 443
    # present the same ones. A host known_hosts does not name is checked against them all.
    candidates = listed or [entry for entry in known if not entry.revoked]
    scope = "" if listed else f" (no entry names {names[0]}: compared with every key listed)"
    matched = [key for key in keys if any(entry.key == key for entry in candidates)]
    if matched:
        return f"{banner}; host key {matched[0].label} is in {probe.known_hosts}{scope}"
    shown = ", ".join(key.label for key in keys)
    raise ProbeFailedError(
        f"HOST KEY MISMATCH at {probe.target}: it presented {shown}, none of which "
        f"{probe.known_hosts} lists{scope}. Someone may be in the path (a TLS/SSH-"
        "intercepting proxy, a hijacked route): do not trust this path until explained"
    )


def split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def read_banner(host: str, port: int, timeout: float) -> str:
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            deadline = time.monotonic() + timeout
            while b"\n" not in data and len(data) <= MAX_BANNER:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                piece = sock.recv(MAX_BANNER + 1 - len(data))
                if not piece:
                    break
                data += piece
    except socket.gaierror as exc:
        raise ProbeFailedError(f"cannot resolve {host}: {exc.strerror}") from exc
    except TimeoutError as exc:
        raise ProbeFailedError(
            f"{where}: no answer within {timeout:g} s (dropped on the way: a firewall, "
            "or the gate refusing this host)"
        ) from exc
    except OSError as exc:
        raise ProbeFailedError(f"{where}: {exc.strerror or exc}") from exc
    line = data.split(b"\n")[0].rstrip(b"\r").decode("ascii", "replace")
    if not line.startswith("SSH-2.0-") and not line.startswith("SSH-1.99-"):
        shown = line[:60] or "nothing"
        raise ProbeFailedError(f"{where} is not an SSH server (it sent {shown!r})")
    return "".join(char for char in line if char.isprintable())


def scan_keys(host: str, port: int, timeout: float) -> list[HostKey]:
    keyscan = shutil.which("ssh-keyscan")
    if keyscan is None:
        raise ProbeFailedError("ssh-keyscan is not installed (Debian: openssh-client)")
    argv = [keyscan, "-T", str(max(1, round(timeout))), "-p", str(port), "-t", KEY_TYPES, host]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout + 5, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProbeFailedError(f"{host}:{port}: the key exchange did not finish") from exc
    keys = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#"):
            key = parse_key(fields[1], fields[2])
            if key is not None:
                keys.append(key)
    if not keys:
        raise ProbeFailedError(f"{host}:{port}: the SSH key exchange failed (no host key offered)")
    return keys


__all__ = ["Entry", "probe_ssh", "read_banner", "scan_keys", "split_target"]
