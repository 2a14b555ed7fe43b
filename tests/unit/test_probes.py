"""Probe logic without a network: known_hosts, pkt-lines, refusals, config."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from repogate.config import parse_config
from repogate.config.schema import Probe
from repogate.errors import ConfigError
from repogate.probes import ProbeFailedError
from repogate.probes.githttp import _refusal, parse_advertisement
from repogate.probes.known_hosts import host_names, read_known_hosts
from repogate.sources.transport import HttpStatusError
from tests.unit.conftest import base_dict

SHIPPED = Path(__file__).parents[2] / "config" / "bitbucket_known_hosts"


def test_the_shipped_known_hosts_covers_ssh_and_altssh_with_bitbuckets_fingerprints() -> None:
    entries = read_known_hosts(SHIPPED)
    fingerprints = {e.key.fingerprint for e in entries if e.matches("[altssh.bitbucket.org]:443")}
    assert fingerprints == {
        "SHA256:ybgmFkzwOSotHTHLJgHO0QN8L0xErw6vd0VhFA9m3SM",  # as bitbucket.org/site/ssh shows
        "SHA256:FC73VB6C4OQLSCrjEayhMp9UMxS97caD/Yyi2bhW/J0",
        "SHA256:46OSHA1Rmj8E8ERTC6xkNcmGOw9oFxYr0WF6zWW8l1E",
    }
    assert all(e.matches("ssh.bitbucket.org") for e in entries)
    assert host_names("altssh.bitbucket.org", 443) == ["[altssh.bitbucket.org]:443"]


def test_hashed_names_and_revoked_keys_are_understood(tmp_path: Path) -> None:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, b"ssh.bitbucket.org", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    key = SHIPPED.read_text().splitlines()[3].split()[1:]
    path = tmp_path / "known_hosts"
    path.write_text(f"{hashed} {' '.join(key)}\n@revoked * {' '.join(key)}\n")
    entries = read_known_hosts(path)
    assert entries[0].matches("ssh.bitbucket.org") and not entries[0].matches("bitbucket.org")
    assert entries[1].revoked


def pkt(text: str) -> str:
    return f"{len(text) + 4:04x}{text}"


def test_a_smart_http_advertisement_is_checked_and_its_refs_counted() -> None:
    body = pkt("# service=git-upload-pack\n") + "0000" + pkt("a" * 40 + " HEAD\0side-band\n")
    body += pkt("a" * 40 + " refs/heads/main\n") + "0000"
    assert parse_advertisement(body) == 2
    with pytest.raises(ProbeFailedError, match="does not start with"):
        parse_advertisement(pkt("hello\n") + "0000")
    with pytest.raises(ProbeFailedError, match="not pkt-line framing"):
        parse_advertisement("<html>login</html>")


PROBE = Probe(
    "https", "git-https", url="https://bitbucket.org/team/repo.git", token_file=Path("/t")
)


def test_an_allowlist_refusal_is_told_from_a_refused_token() -> None:
    allowlist = HttpStatusError(
        "HTTP 403",
        403,
        detail="Your IP address (192.0.2.1) is not on this workspace's IP allowlist.",
    )
    assert _refusal(allowlist, PROBE).startswith("Bitbucket's IP allowlist refused us")
    assert "token was refused (HTTP 401)" in _refusal(HttpStatusError("HTTP 401", 401), PROBE)
    assert "no read access" in _refusal(HttpStatusError("HTTP 403", 403, detail="Forbidden"), PROBE)


def test_probe_config_mistakes_name_their_key_path() -> None:
    document = base_dict()
    document["probes"] = [
        {"name": "ssh", "type": "ssh", "target": "ssh.bitbucket.org"},
        {"name": "https", "type": "git-https", "url": "http://bitbucket.org/team/repo.git"},
        {"name": "x", "type": "ftp"},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    text = str(caught.value)
    assert "probes[0].target: 'ssh.bitbucket.org' is not HOST:PORT" in text
    assert 'probes[0].known_hosts: is required with type = "ssh"' in text
    assert "probes[1].url: 'http://bitbucket.org/team/repo.git' is not HTTPS" in text
    assert "probes[2].type: 'ftp' is not one of: ssh, git-https" in text


def test_snat_needs_declared_addresses() -> None:
    document = base_dict()
    document["egress"] = {"snat": True}
    with pytest.raises(ConfigError, match=r"egress\.snat: needs egress\.addresses"):
        parse_config(document)
    document["egress"] = {"addresses": ["203.0.113.7", "2001:db8:7::7"], "snat": True}
    egress = parse_config(document).egress
    assert (egress.address(4), egress.address(6)) == ("203.0.113.7", "2001:db8:7::7")


def test_the_runner_runs_each_probe_on_its_interval_and_publishes_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from prometheus_client import generate_latest

    from repogate.daemon import probes as runner_module
    from repogate.daemon.metrics import Metrics
    from repogate.probes import ProbeResult

    monkeypatch.setattr(runner_module, "FIRST_RUN_DELAY", 0.0)
    ran = threading.Event()

    def fake(probe: Probe) -> ProbeResult:
        ran.set()
        return ProbeResult(probe.name, probe.type, probe.target, False, "refused", 0.25, 0.0)

    metrics = Metrics()
    runner = runner_module.ProbeRunner(metrics, run=fake)
    runner.configure([Probe("ssh", "ssh", target="ssh.bitbucket.org:22", interval=60.0)])
    runner.start()
    try:
        assert ran.wait(5.0)
    finally:
        runner.stop()
    text = generate_latest(metrics.registry).decode()
    assert 'repogate_probe_success{probe="ssh",type="ssh"} 0.0' in text
    assert [r.reason for r in runner.run_now(["ssh"])] == ["refused"]
