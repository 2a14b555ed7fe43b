"""The lab's git servers, real OpenSSH and nginx + git http-backend, seen from another namespace.

Each test builds its own pair of namespaces (`rg<6 hex>-srv` 10.77.0.1, `rg<6 hex>-cli`
10.77.0.2, a veth between them) and deletes them, killing whatever still runs inside, even
when the test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.githttp import GitHttpsProcess, start_git_https
from lab.sshd import SSHD, start_sshd

pytestmark = pytest.mark.root

SERVER, CLIENT = "10.77.0.1", "10.77.0.2"
TOKEN = "lab-token-1"
INFO_REFS = "/team/repo.git/info/refs?service=git-upload-pack"


def _missing(*tools: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    absent = [tool for tool in tools if shutil.which(tool) is None]
    return f"needs {', '.join(absent)}" if absent else None


SSH_TOOLS = ("ip", SSHD, "ssh-keygen", "ssh-keyscan")
HTTP_TOOLS = ("ip", "nginx", "fcgiwrap", "git")

# Runs in the client namespace: GET a URL, print status, content type and body as JSON.
FETCH = """
import base64, json, ssl, sys, urllib.error, urllib.request
url, ca_file, credentials = sys.argv[1:4]
request = urllib.request.Request(url)
if credentials:
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
context = ssl.create_default_context(cafile=ca_file)
try:
    answer = urllib.request.urlopen(request, context=context, timeout=5)
except urllib.error.HTTPError as error:
    answer = error
print(json.dumps({
    "status": answer.status,
    "content_type": answer.headers.get("Content-Type"),
    "authenticate": answer.headers.get("WWW-Authenticate"),
    "body": answer.read().decode("latin-1"),
}))
"""


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces joined by a veth: (server ns 10.77.0.1, client ns 10.77.0.2)."""
    tag = netns.new_tag()
    server, client = f"{tag}-srv", f"{tag}-cli"
    made: list[str] = []
    try:
        for name in (server, client):
            netns.add_netns(name)
            made.append(name)
        netns.add_veth(server, "veth0", client, "veth0")
        for name, address in ((server, f"{SERVER}/24"), (client, f"{CLIENT}/24")):
            netns.add_address(name, "veth0", address)
            netns.link_up(name, "veth0")
        yield server, client
    finally:
        for name in made:
            netns.delete_netns(name)


def _keyscan(client: str, port: int) -> set[str]:
    argv = ["ssh-keyscan", "-T", "3", "-p", str(port), SERVER]
    out = netns.run(netns.in_netns(client, argv), timeout=15).stdout
    return {line for line in out.splitlines() if line and not line.startswith("#")}


@pytest.mark.skipif(_missing(*SSH_TOOLS) is not None, reason=_missing(*SSH_TOOLS) or "")
def test_sshd_host_keys_match_known_hosts_until_rotated(
    pair: tuple[str, str], tmp_path: Path
) -> None:
    server, client = pair
    names = {22: SERVER, 443: f"[{SERVER}]:443"}
    with start_sshd(server, tmp_path / "sshd", [(SERVER, 22), (SERVER, 443)]) as sshd:
        pinned = {port: set(sshd.known_hosts([name]).splitlines()) for port, name in names.items()}
        assert len(pinned[22]) == 2  # ed25519 and ECDSA
        assert {line.split()[1] for line in pinned[22]} == {"ssh-ed25519", "ecdsa-sha2-nistp256"}
        for port in names:
            assert _keyscan(client, port) == pinned[port]

        sshd.rotate_host_keys()

        for port, name in names.items():
            scanned = _keyscan(client, port)
            assert scanned == set(sshd.known_hosts([name]).splitlines())
            assert not scanned & pinned[port]
    assert "Server listening on 10.77.0.1 port 443" in sshd.log_path.read_text()


def _git(client: str, git: GitHttpsProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.defpath,
        "HOME": str(git.directory),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSL_CAINFO": str(git.ca_file),
    }
    return netns.run(netns.in_netns(client, ["git", *argv]), check=False, env=env, timeout=20)


def _fetch(client: str, git: GitHttpsProcess, path: str, credentials: str = "") -> dict[str, str]:
    url = git.url("") + path.lstrip("/")
    argv = [sys.executable, "-c", FETCH, url, str(git.ca_file), credentials]
    result: dict[str, str] = json.loads(netns.run(netns.in_netns(client, argv)).stdout)
    return result


Entry = tuple[str, int, str]


def _logged_during(client: str, git: GitHttpsProcess, action: Callable[[], object]) -> list[Entry]:
    """What nginx logged while action ran, fenced by two marker requests.

    nginx's one worker logs requests in the order it answered them, so once the second
    marker is logged, everything before it is too.
    """
    before, after = (f"/rg-mark/{secrets.token_hex(4)}" for _ in range(2))
    _fetch(client, git, before)
    action()
    _fetch(client, git, after)
    entries = git.wait_seen(lambda seen: any(uri == after for _, _, uri in seen))
    uris = [uri for _, _, uri in entries]
    return entries[uris.index(before) + 1 : uris.index(after)]


@pytest.mark.skipif(_missing(*HTTP_TOOLS) is not None, reason=_missing(*HTTP_TOOLS) or "")
def test_git_https_allowlist_then_token_then_git(pair: tuple[str, str], tmp_path: Path) -> None:
    server, client = pair
    with start_git_https(
        server,
        tmp_path / "git",
        (SERVER, 443),
        token=TOKEN,
        allowed_sources=[CLIENT],
        server_names=["bitbucket.org"],
    ) as git:
        assert git.url() == f"https://{SERVER}:443/team/repo.git"

        clone = tmp_path / "clone"
        results: list[subprocess.CompletedProcess[str]] = []
        logged = _logged_during(
            client,
            git,
            lambda: results.extend(
                [
                    _git(client, git, "ls-remote", git.url(token=TOKEN)),
                    _git(client, git, "clone", "-q", git.url(token=TOKEN), str(clone)),
                ]
            ),
        )
        for result in results:
            assert result.returncode == 0, result.stderr
        assert results[0].stdout.split()[1::2] == ["HEAD", "refs/heads/main"]
        assert (clone / "README").read_text().startswith("team/repo.git")
        assert (CLIENT, 200, INFO_REFS) in logged
        assert {address for address, _, _ in git.seen()} == {CLIENT}

        answer = _fetch(client, git, INFO_REFS, f"x-token-auth:{TOKEN}")
        assert answer["status"] == 200
        assert answer["content_type"] == "application/x-git-upload-pack-advertisement"
        assert answer["body"].startswith("001e# service=git-upload-pack\n0000")

        logged = _logged_during(
            client,
            git,
            lambda: results.append(_git(client, git, "ls-remote", git.url(token="wrong"))),
        )
        assert results[-1].returncode != 0
        assert logged and set(logged) == {(CLIENT, 401, INFO_REFS)}
        answer = _fetch(client, git, INFO_REFS)
        assert answer["status"] == 401
        assert answer["authenticate"] == 'Basic realm="Bitbucket.org HTTP"'

        git.set_token("lab-token-2")
        assert _fetch(client, git, INFO_REFS, f"x-token-auth:{TOKEN}")["status"] == 401
        assert _fetch(client, git, INFO_REFS, "x-token-auth:lab-token-2")["status"] == 200

        git.set_allowed_sources(["10.77.0.99", "192.0.2.0/24"])
        answer = _fetch(client, git, INFO_REFS, "x-token-auth:lab-token-2")
        assert answer["status"] == 403
        assert answer["body"] == (
            f"Your IP address ({CLIENT}) is not on this workspace's IP allowlist.\n"
        )
        logged = _logged_during(
            client,
            git,
            lambda: results.append(_git(client, git, "ls-remote", git.url(token="lab-token-2"))),
        )
        assert results[-1].returncode != 0
        assert logged == [(CLIENT, 403, INFO_REFS)]
        assert _fetch(client, git, INFO_REFS)["status"] == 403  # the allowlist comes first

        git.set_allowed_sources(["10.77.0.0/24"])
        assert _fetch(client, git, INFO_REFS, "x-token-auth:lab-token-2")["status"] == 200
