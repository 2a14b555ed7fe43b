"""The git-https probe: what `git clone https://...` asks first, with a repository token.

`GET <repo>/info/refs?service=git-upload-pack`, authenticated as Bitbucket takes
repository access tokens (basic auth, user `x-token-auth`). Success is a valid
smart-HTTP advertisement: pkt-lines starting `# service=git-upload-pack`, a flush,
then refs. Each failure is named for what it means at Bitbucket: a 403 that says
the IP is not allowed is the workspace's IP allowlist refusing this host's egress
address, told apart from a refused token (401) or a token without access (403).
Through the one HTTP client (sources.transport): TLS verified, timeouts, size cap.
"""

from __future__ import annotations

import base64
import dataclasses

from repogate.config.schema import HttpOptions, Probe
from repogate.errors import SourceError
from repogate.probes import ProbeFailedError
from repogate.sources.transport import Call, HttpStatusError, call
from repogate.sources.trust import read_token

ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
SERVICE_LINE = "# service=git-upload-pack\n"
MAX_BYTES = 4 << 20
ALLOWLIST_WORDS = ("allowlist", "whitelist", "ip address", "not allowed from")


def probe_git_https(probe: Probe) -> str:
    url = f"{probe.url}/info/refs?service=git-upload-pack"
    authorization = None
    if probe.token_file is not None:
        try:
            token = read_token(probe.token_file)
        except SourceError as exc:
            raise ProbeFailedError(str(exc)) from exc
        pair = base64.b64encode(f"x-token-auth:{token}".encode()).decode()
        authorization = f"Basic {pair}"
    options = HttpOptions(url, ca_file=probe.ca_file, timeout=probe.timeout, max_bytes=MAX_BYTES)
    try:
        response = call(
            dataclasses.replace(options, token_file=None),
            Call(authorization=authorization, accept="*/*"),
        )
    except HttpStatusError as exc:
        raise ProbeFailedError(_refusal(exc, probe)) from exc
    except SourceError as exc:
        raise ProbeFailedError(str(exc)) from exc
    content_type = (response.content_type or "").split(";")[0].strip().lower()
    if content_type != ADVERTISEMENT:
        raise ProbeFailedError(
            f"{probe.url}: answered {content_type or 'no Content-Type'}, not a git smart-HTTP "
            "advertisement (a proxy or login page in the path?)"
        )
    refs = parse_advertisement(response.text)
    return f"smart HTTP advertisement with {refs} ref{'s' if refs != 1 else ''}"


def _refusal(exc: HttpStatusError, probe: Probe) -> str:
    detail = " ".join(exc.detail.split())[:200]
    said = f" (it said: {detail})" if detail else ""
    if exc.status == 403 and any(word in detail.lower() for word in ALLOWLIST_WORDS):
        return (
            "Bitbucket's IP allowlist refused us: this host's egress address is not on the "
            f"workspace's allowlist (HTTP 403){said}"
        )
    if exc.status == 401:
        which = "the token was refused" if probe.token_file else "credentials are needed"
        return (
            f"{which} (HTTP 401): check token_file holds a repository access token with read scope"
        )
    if exc.status == 403:
        return f"HTTP 403: the token has no read access to this repository{said}"
    if exc.status == 404:
        return "HTTP 404: no such repository, or the token cannot see it"
    return str(exc) + said


def parse_advertisement(text: str) -> int:
    """Check the pkt-line framing; return the number of refs advertised."""
    position = 0
    lines: list[str] = []
    while position < len(text):
        try:
            size = int(text[position : position + 4], 16)
        except ValueError as exc:
            raise ProbeFailedError(f"not pkt-line framing at byte {position}") from exc
        if size == 0:
            lines.append("")  # flush
            position += 4
            continue
        if size < 4 or position + size > len(text):
            raise ProbeFailedError(f"a pkt-line at byte {position} runs past the body")
        lines.append(text[position + 4 : position + size])
        position += size
    if len(lines) < 2 or lines[0] != SERVICE_LINE or lines[1] != "":
        raise ProbeFailedError("the advertisement does not start with '# service=git-upload-pack'")
    return sum(1 for line in lines[2:] if line)
