"""known_hosts as OpenSSH writes it: plain and hashed names, `[host]:port`, markers.

Only what a host-key check needs: the keys listed for a name. `@revoked` keys are
collected apart (a probe that meets one fails loudly); `@cert-authority` lines are
skipped (a CA vouches for certificates, which a key scan does not present).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from repogate.probes import ProbeFailedError


@dataclass(frozen=True)
class HostKey:
    key_type: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    blob: bytes

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` prints it: SHA256:<base64 without padding>."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"

    @property
    def label(self) -> str:
        short = self.key_type.removeprefix("ssh-").split("-")[0].upper()
        return f"{short} {self.fingerprint}"


@dataclass(frozen=True)
class Entry:
    names: tuple[str, ...]  # plain names, or "|1|salt|hash" hashed ones
    key: HostKey
    revoked: bool = False

    def matches(self, name: str) -> bool:
        return any(_name_matches(pattern, name) for pattern in self.names)


def read_known_hosts(path: Path) -> list[Entry]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ProbeFailedError(f"cannot read known_hosts {path}: {exc.strerror or exc}") from exc
    entries: list[Entry] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        revoked = fields[0] == "@revoked"
        if fields[0].startswith("@"):
            if not revoked:
                continue  # @cert-authority
            fields = fields[1:]
        if len(fields) < 3:
            continue
        key = parse_key(fields[1], fields[2])
        if key is not None:
            entries.append(Entry(tuple(fields[0].split(",")), key, revoked))
    return entries


def parse_key(key_type: str, text: str) -> HostKey | None:
    try:
        return HostKey(key_type, base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return None


def host_names(host: str, port: int) -> list[str]:
    """How known_hosts names a host on a port: `host` on 22, `[host]:port` otherwise."""
    return [host] if port == 22 else [f"[{host}]:{port}"]


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt, digest = pattern.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
        except (ValueError, binascii.Error):
            return False
    if pattern.startswith("!"):
        return False  # negations only exclude, and a scan never needs them to match
    return pattern.lower() == name.lower()
