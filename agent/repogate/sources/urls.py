"""URLs as the HTTP client uses them: parsed into a target, shown without secrets.

And the one header parsed outside the exchange, Retry-After, which MDM connectors
honour when a vendor throttles them.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from dataclasses import dataclass

_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"


class UrlError(Exception):
    """A URL the client will not fetch; the message is worded for the admin."""


@dataclass(frozen=True)
class Target:
    url: str
    https: bool
    host: str
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def origin(self) -> tuple[bool, str, int]:
        return (self.https, self.host, self.port)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(url: str, allow_insecure: bool, *, redirected: bool) -> Target:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    where = f"redirected to {display_url(url)}: " if redirected else ""
    if scheme == "http" and not allow_insecure:
        raise UrlError(
            f"{where}plain http:// is refused (set allow_insecure = true to allow it, "
            "and accept that anyone on the path can then change the list)"
        )
    if scheme not in ("http", "https"):
        allowed = "http:// and https://" if allow_insecure else "https://"
        raise UrlError(f"{where}only {allowed} URLs can be fetched")
    try:
        port = parts.port
    except ValueError as exc:
        raise UrlError(f"{where}bad port in URL: {exc}") from exc
    if not parts.hostname:
        raise UrlError(f"{where}no host in URL")
    https = scheme == "https"
    path = urllib.parse.quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe=_SAFE_QUERY)
    return Target(url, https, parts.hostname, port or (443 if https else 80), path)


def display_url(url: str) -> str:
    """A URL for messages: without query or credentials (a presigned URL's signature)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
