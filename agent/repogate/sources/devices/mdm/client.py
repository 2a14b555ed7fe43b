"""One MDM's API session: its access token, JSON GETs, and the vendor throttling us.

Tokens (Intune and Jamf Pro: OAuth2 client credentials) are cached until shortly
before they expire and renewed then; a cached token the API refuses (revoked, or a
clock disagreeing about expiry) is dropped and the request tried once with a new
one. Fleet's API token is read from its file at each request, so rotating it needs
no reload. HTTP 429, and 503 with Retry-After, are the vendor asking us to wait: a
short wait is taken here and the page asked again, a longer one ends the read as
`ThrottledError`, and the reader does not ask before that time.

Every request goes through the one HTTP client (sources.transport): TLS verified,
timeouts re-armed per read, a size cap per response, the credential never sent to
another origin. Secrets are read from files at each token request and appear in no
message; nor do the vendors' error bodies except for their documented error codes
and descriptions.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from repogate.config.schema import MdmOptions
from repogate.errors import SourceError
from repogate.sources.transport import Call, HttpResponse, HttpStatusError, call
from repogate.sources.trust import read_token
from repogate.sources.urls import display_url

# Renew a token this long before the vendor says it expires (Jamf's last 5 minutes).
RENEW_MARGIN = 60.0
SHORT_WAIT = 5.0  # a Retry-After up to this is waited out within the read
MAX_WAITS = 3  # per read
DEFAULT_WAIT = 60.0  # 429 without Retry-After
DETAIL_CHARS = 200
PERMISSION = {
    "intune": "the app registration needs the Microsoft Graph application permission "
    "DeviceManagementManagedDevices.Read.All, with admin consent",
    "jamf": 'the API client\'s role needs the privilege "Read Computers"',
    "fleet": "the API user needs the observer role (global, or on the teams to read)",
}
VENDOR_NAME = {"intune": "Intune", "jamf": "Jamf Pro", "fleet": "Fleet"}

Transport = Callable[..., HttpResponse]


class ThrottledError(SourceError):
    """The vendor asked us to wait `wait` seconds before asking again."""

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


class ApiClient:
    """Requests to one MDM, authorised; kept across reads so its token is reused."""

    def __init__(
        self,
        options: MdmOptions,
        *,
        transport: Transport = call,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._token: str | None = None
        self._renew_at = float("-inf")
        self.tokens_issued = 0  # for tests and the debug log: renewals, not requests
        # Intune: MACs fetched device by device (id -> (macs, when)), kept across reads.
        self.macs: dict[str, tuple[tuple[str, ...], float]] = {}

    @property
    def vendor(self) -> str:
        return VENDOR_NAME[self.options.vendor]

    def get(self, url: str) -> Any:
        """The JSON document at `url` (on the API's own origin)."""
        waits = 0
        renewed = False
        while True:
            issued = self.tokens_issued
            authorization = self._authorization()
            renewed = renewed or self.tokens_issued != issued
            try:
                response = self._transport(
                    dataclasses.replace(self.options.http, url=url, token_file=None),
                    Call(authorization=authorization, accept="application/json"),
                )
            except HttpStatusError as exc:
                if exc.status == 401 and self._token is not None and not renewed:
                    self._token = None  # a cached token refused: renew once, then report
                    continue
                wait = self._wait(exc)
                if wait is not None and wait <= SHORT_WAIT and waits < MAX_WAITS:
                    waits += 1
                    self._sleep(wait)
                    continue
                raise self._explain(exc, wait) from exc
            except SourceError as exc:  # no answer: TLS, timeouts, resets, size
                raise SourceError(f"{self.vendor}: {_shorten(str(exc))}") from exc
            return _json(response)

    def _authorization(self) -> str:
        if self.options.vendor == "fleet":
            assert self.options.http.token_file is not None
            return f"Bearer {read_token(self.options.http.token_file)}"
        if self._token is None or self._clock() >= self._renew_at:
            self._token, lifetime = self._request_token()
            self.tokens_issued += 1
            margin = min(RENEW_MARGIN, lifetime / 2)
            self._renew_at = self._clock() + lifetime - margin
        return f"Bearer {self._token}"

    def _request_token(self) -> tuple[str, float]:
        """OAuth2 client credentials (RFC 6749 4.4), as Entra ID and Jamf Pro take them."""
        options = self.options
        assert options.client_secret_file is not None
        form = {
            "grant_type": "client_credentials",
            "client_id": options.client_id,
            "client_secret": read_token(options.client_secret_file, "client_secret_file"),
        }
        if options.vendor == "intune":
            tenant = urllib.parse.quote(options.tenant, safe="")
            url = f"{options.authority}/{tenant}/oauth2/v2.0/token"
            form["scope"] = f"{_origin(options.http.url)}/.default"
        else:
            url = f"{options.http.url}/api/oauth/token"
        request = Call(
            method="POST",
            body=urllib.parse.urlencode(form).encode(),
            content_type="application/x-www-form-urlencoded",
            accept="application/json",
        )
        try:
            response = self._transport(
                dataclasses.replace(options.http, url=url, token_file=None), request
            )
        except HttpStatusError as exc:
            raise self._explain(exc, self._wait(exc), token=True) from exc
        document = _json(response)
        token = document.get("access_token") if isinstance(document, dict) else None
        lifetime = document.get("expires_in") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise SourceError(f"{self.vendor}'s token endpoint answered without an access_token")
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)  # Entra ID's v1 endpoint sends it as a string
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = 300  # unsaid: assume Jamf's five minutes
        return token, float(lifetime)

    def _wait(self, exc: HttpStatusError) -> float | None:
        if exc.status == 429:
            return exc.retry_after if exc.retry_after is not None else DEFAULT_WAIT
        if exc.status == 503 and exc.retry_after is not None:
            return exc.retry_after
        return None

    def _explain(
        self, exc: HttpStatusError, wait: float | None, *, token: bool = False
    ) -> SourceError:
        detail = vendor_detail(exc.detail)
        what = f"{self.vendor}'s token endpoint" if token else self.vendor
        message = f"{what}: {_shorten(str(exc))}" + (f" ({detail})" if detail else "")
        if wait is not None:
            return ThrottledError(f"{message}; asked to wait {wait:g} s", wait)
        if exc.status in (401, 403) or (token and exc.status == 400):
            message += f"; check the credentials: {PERMISSION[self.options.vendor]}"
        return SourceError(message)


def _json(response: HttpResponse) -> Any:
    try:
        return json.loads(response.text)
    except ValueError as exc:
        where = display_url(response.url)
        raise SourceError(f"{where}: the answer is not JSON (cut short?): {exc}") from exc


def _shorten(message: str) -> str:
    """A transport message names the URL it fetched first; without its query (a
    $select list, a skip token) the admin reads the reason sooner."""
    url, sep, rest = message.partition(": ")
    return f"{display_url(url)}{sep}{rest}" if sep and "://" in url else message


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def same_origin(url: str, base: str) -> bool:
    """Whether a link a vendor returned (Graph's nextLink) stays on the API's origin."""
    return _origin(url).lower() == _origin(base).lower()


def vendor_detail(body: str) -> str:
    """The documented error code and text of a vendor's error body, shortened; else ""."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    parts: list[str] = []
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict):  # Graph: {"error": {"code", "message"}}
            parts = [str(error.get("code", "")), str(error.get("message", ""))]
        elif isinstance(error, str):  # OAuth2 (Entra ID, Jamf): error, error_description
            description = str(document.get("error_description", "")).split("\r\n")[0]
            parts = [error, description.split(" Trace ID")[0]]
        elif isinstance(document.get("errors"), list) and document["errors"]:
            first = document["errors"][0]  # Jamf Pro's and Fleet's lists of errors
            if isinstance(first, dict):
                parts = [
                    str(first.get("code") or document.get("message") or ""),
                    str(first.get("description") or first.get("reason") or ""),
                ]
    found = ": ".join(part for part in parts if part and part != "None")
    found = "".join(char if char.isprintable() else " " for char in found)
    return found[:DETAIL_CHARS]
