"""What a fetch trusts and presents: the CA store and the bearer token, read at each fetch."""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path

from repogate.errors import SourceError

MAX_TOKEN_BYTES = 64 * 1024
# Where distributions keep their CA bundle, for Python builds whose OpenSSL looks elsewhere
# (standalone builds compiled with another OPENSSLDIR find an empty store and fail every
# verification with "unable to get local issuer certificate").
_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSDs
)


def read_token(path: Path, key: str = "token_file") -> str:
    """The bearer token in `path`, read at each fetch so a rotated token needs no reload.

    Errors name the file (as the config's `key`), never its content: the token, or the
    client secret read the same way, must not reach a log.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise SourceError(f"cannot read {key} {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_TOKEN_BYTES:
        raise SourceError(f"{key} {path} is over {MAX_TOKEN_BYTES} bytes: not a token")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        # from None: the decode error carries the file's bytes.
        raise SourceError(f"{key} {path} holds non-ASCII bytes") from None
    if not token:
        raise SourceError(f"{key} {path} is empty")
    if any(char.isspace() or not char.isprintable() for char in token):
        raise SourceError(
            f"{key} {path} must hold one token on one line "
            "(it holds spaces, several lines or control characters)"
        )
    return token


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify certificates and host names against `ca_file` alone, or the system's store."""
    try:
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
        else:
            context = ssl.create_default_context()
            bundle = _fallback_bundle()
            if bundle is not None:
                context.load_verify_locations(cafile=bundle)
    except ssl.SSLError as exc:
        raise SourceError(
            f"ca_file {ca_file} holds no usable PEM certificate ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise SourceError(f"cannot read ca_file {ca_file}: {exc.strerror or exc}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


@functools.cache
def _fallback_bundle() -> str | None:
    """A distribution's CA bundle when OpenSSL's default paths hold no CA (checked once)."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return None
    if paths.capath and os.path.isdir(paths.capath):
        try:
            if any(name.endswith(".0") for name in os.listdir(paths.capath)):
                return None
        except OSError:
            pass
    return next((bundle for bundle in _CA_BUNDLES if os.path.isfile(bundle)), None)
