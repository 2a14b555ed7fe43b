"""Probes: the whole path to Bitbucket, checked from this host the way git uses it.

The gate admitting a client is only part of "git push works": NAT, DNS,
Bitbucket's own IP allowlist, its host keys and a token's scope all have to be
right too. A probe runs one such check (`ssh`: the banner and the host key
against known_hosts; `git-https`: the smart-HTTP ref advertisement with a
repository access token) and returns a result whose reason tells the admin which
part failed, in Bitbucket's terms. The daemon runs them on their interval;
`repogate probe` runs them now.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from repogate.config.schema import Probe
from repogate.errors import RepogateError


@dataclass(frozen=True)
class ProbeResult:
    name: str
    type: str
    target: str
    ok: bool
    reason: str  # why not, or what was seen ("SSH-2.0-... host key ED25519 SHA256:... known")
    seconds: float
    at: float  # when it ran (epoch seconds)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def line(self) -> str:
        verdict = "ok  " if self.ok else "FAIL"
        where = f"{self.type} {self.target}, {self.seconds:.2f} s"
        return f"{verdict} {self.name} ({where}): {self.reason}"


class ProbeFailedError(RepogateError):
    """A probe found the path broken; the message is the reason for the admin."""


def target_of(probe: Probe) -> str:
    return probe.target if probe.type == "ssh" else probe.url


def run_probe(probe: Probe) -> ProbeResult:
    """Run one probe now; never raises for a failed check (the result says why)."""
    started = time.monotonic()
    at = time.time()
    try:
        if probe.type == "ssh":
            from repogate.probes.ssh import probe_ssh  # noqa: PLC0415

            reason = probe_ssh(probe)
        else:
            from repogate.probes.githttp import probe_git_https  # noqa: PLC0415

            reason = probe_git_https(probe)
        ok = True
    except ProbeFailedError as exc:
        reason, ok = str(exc), False
    except Exception as exc:  # a probe bug must read as a failed probe, not kill a thread
        reason, ok = f"the probe itself failed: {type(exc).__name__}: {exc}", False
    return ProbeResult(
        probe.name, probe.type, target_of(probe), ok, reason, time.monotonic() - started, at
    )
