"""What Microsoft Graph (Intune), Jamf Pro and Fleet answer, as their documentation shows it.

Pure functions from a parsed request and the stand-in's state to an `Answer` (status, JSON
body, headers); `lab.mdm` does the HTTP, the faults and the bookkeeping. Each vendor's
quirks that a connector must cope with are kept, because they are the point of a stand-in:

- Graph lists `wiFiMacAddress` and `ethernetMacAddress` as null whatever `$select` says;
  only a single-device GET carries them. Paging is server-driven: `@odata.nextLink` is an
  absolute URL with an opaque `$skiptoken`, and a page may be shorter than `$top`.
- Jamf pages by `page`/`page-size` (from 0) with a `totalCount`, fills only the requested
  `section`s (the others are null) and sorts by `general.name` unless told otherwise.
- Fleet pages by `page`/`per_page` (from 0) with no total: a short page is the last one.
  Its API token is static (rotate it by rewriting the state); `policies` only with
  `populate_policies=true`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import http
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

State = Mapping[str, Any]
Query = Mapping[str, list[str]]

# The first path segment names the vendor: /login and /graph are both Intune's.
PREFIXES = {"login": "intune", "graph": "intune", "jamf": "jamf", "fleet": "fleet"}
VENDORS = ("intune", "jamf", "fleet")
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
JSON = "application/json;charset=utf-8"
GRAPH_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;charset=utf-8"

# managedDevice (Graph v1.0) properties a $select may name; any key a device in the state
# carries counts too. Unknown names are a 400, as on Graph, so a typo fails here first.
# (A word list: 36 one-per-line literals would bury the module.)
MANAGED_DEVICE_PROPERTIES = (  # noqa: SIM905 - see above
    "id userId deviceName managedDeviceOwnerType enrolledDateTime lastSyncDateTime "
    "operatingSystem complianceState jailBroken managementAgent osVersion easActivated "
    "easDeviceId azureADRegistered deviceEnrollmentType emailAddress azureADDeviceId "
    "deviceRegistrationState deviceCategoryDisplayName isSupervised isEncrypted "
    "userPrincipalName model manufacturer imei complianceGracePeriodExpirationDateTime "
    "serialNumber phoneNumber userDisplayName wiFiMacAddress ethernetMacAddress "
    "managedDeviceName partnerReportedThreatState udid notes enrollmentProfileName"
).split()
LIST_ONLY_NULL = ("wiFiMacAddress", "ethernetMacAddress")  # documented: null in lists

JAMF_SECTIONS = (  # noqa: SIM905 - a word list, as above
    "GENERAL DISK_ENCRYPTION PURCHASING APPLICATIONS STORAGE USER_AND_LOCATION "
    "CONFIGURATION_PROFILES PRINTERS SERVICES HARDWARE LOCAL_USER_ACCOUNTS CERTIFICATES "
    "ATTACHMENTS PLUGINS PACKAGE_RECEIPTS FONTS SECURITY OPERATING_SYSTEM LICENSED_SOFTWARE "
    "IBEACONS SOFTWARE_UPDATES EXTENSION_ATTRIBUTES CONTENT_CACHING GROUP_MEMBERSHIPS"
).split()
JAMF_KEYS = {  # USER_AND_LOCATION -> userAndLocation: the record key a section fills
    word: word.split("_")[0].lower() + "".join(w.capitalize() for w in word.split("_")[1:])
    for word in JAMF_SECTIONS
}
PHRASES = {status.value: status.phrase for status in http.HTTPStatus}
GRAPH_TYPE = "microsoft.graph.managedDevice"
GRAPH_CONTEXT = "/graph/v1.0/$metadata#deviceManagement/managedDevices"
FLEET_HOSTS = re.compile(r"/fleet/api/(v1|latest)/fleet/hosts")
MANAGED_DEVICES = re.compile(r"/graph/v1\.0/deviceManagement/managedDevices(?:/([^/]+))?")


@dataclass(frozen=True)
class Request:
    """One request as the vendor logic sees it; `origin` is how the client addressed us."""

    method: str
    path: str
    query: Query
    form: Query
    authorization: str | None
    origin: str


@dataclass(frozen=True)
class Answer:
    """A vendor's answer: its status, a JSON-able body and any headers of its own."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = JSON


class Tokens:
    """Bearer tokens the stand-in issued, per vendor, each valid until its monotonic expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: dict[str, tuple[str, float]] = {}

    def issue(self, vendor: str, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._issued[token] = (vendor, time.monotonic() + ttl)
        return token

    def valid(self, vendor: str, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        with self._lock:
            issued = self._issued.get(token.strip(), ("", 0.0))
        return scheme.lower() == "bearer" and issued[0] == vendor and time.monotonic() < issued[1]

    def expire(self, vendor: str) -> None:
        """Invalidate every token of `vendor` issued so far (later ones are valid again)."""
        with self._lock:
            self._issued = {t: v for t, v in self._issued.items() if v[0] != vendor}


def answer(vendor: str, request: Request, state: State, tokens: Tokens) -> Answer:
    """The vendor's answer to one request, given the current state."""
    if vendor == "intune":
        if request.path.startswith("/login/"):
            return _aad_token(request, state, tokens)
        return _graph(request, state, tokens)
    if vendor == "jamf":
        return _jamf(request, state, tokens)
    return _fleet(request, state)


def fault_answer(vendor: str, path: str, status: int) -> Answer:
    """A small vendor-like error for an injected status (500, 503, 429, 404...)."""
    phrase = PHRASES.get(status, "Error")
    if vendor == "jamf":
        return jamf_error(status, phrase.upper().replace(" ", "_"), phrase)
    if vendor == "fleet":
        return fleet_error(status, phrase)
    if path.startswith("/login/"):
        error = "temporarily_unavailable" if status in (429, 503) else "server_error"
        return _aad_error(status, error, 50000 + status, f"{phrase} (stand-in fault).")
    code = "ResourceNotFound" if status == 404 else phrase.title().replace(" ", "")
    return graph_error(status, code, f"{phrase} (stand-in fault).")


# --- Microsoft identity platform and Graph ------------------------------------------------


def graph_error(status: int, code: str, message: str) -> Answer:
    inner = {"date": _now(), "request-id": str(uuid.uuid4()), "client-request-id": None}
    body = {"error": {"code": code, "message": message, "innerError": inner}}
    headers = {"WWW-Authenticate": 'Bearer realm=""'} if status == 401 else {}
    return Answer(status, body, headers)


def _aad_error(status: int, error: str, code: int, description: str) -> Answer:
    trace, correlation = uuid.uuid4(), uuid.uuid4()
    text = f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}"
    body: dict[str, Any] = {"error": error, "error_description": f"{text}\r\nTimestamp: {_now()}"}
    body |= {"error_codes": [code], "timestamp": _now(), "trace_id": str(trace)}
    return Answer(status, {**body, "correlation_id": str(correlation)})


def _aad_token(  # noqa: PLR0911 - one return per documented refusal, in precedence order
    request: Request, state: State, tokens: Tokens
) -> Answer:
    match = re.fullmatch(r"/login/([^/]+)/oauth2/v2\.0/token", request.path)
    if match is None:
        return _aad_error(404, "invalid_request", 90002, "Unknown endpoint.")
    creds = _credentials(state, "intune")
    tenant = match.group(1)
    if tenant.lower() != str(creds.get("tenant", "")).lower():
        why = f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."
        return _aad_error(400, "invalid_request", 90002, why)
    if request.method != "POST":
        return _aad_error(405, "invalid_request", 900561, "The endpoint only accepts POST.")
    form = {name: values[0] for name, values in request.form.items()}
    if form.get("grant_type") != "client_credentials":
        why = "The provided grant_type is not supported by this stand-in."
        return _aad_error(400, "unsupported_grant_type", 70003, why)
    # Graph's resource, or the stand-in's origin (a client given it as Graph asks for that).
    if form.get("scope") not in (GRAPH_SCOPE, f"{request.origin}/.default"):
        why = f"The provided value for the input parameter 'scope' is not valid: {GRAPH_SCOPE}."
        return _aad_error(400, "invalid_scope", 1002012, why)
    if not all(_same(form, state, "intune", name) for name in ("client_id", "client_secret")):
        why = (
            "Invalid client secret provided. Ensure the secret being sent in the request is "
            "the client secret value, not the client secret ID."
        )
        return _aad_error(401, "invalid_client", 7000215, why)
    ttl = int(state.get("token_ttl") or 3600)
    token = tokens.issue("intune", ttl)
    body = {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": token}
    return Answer(200, body)


def _graph(request: Request, state: State, tokens: Tokens) -> Answer:
    if not tokens.valid("intune", request.authorization):
        message = "Access token has expired or is not yet valid."
        return graph_error(401, "InvalidAuthenticationToken", message)
    match = MANAGED_DEVICES.fullmatch(request.path)
    if match is None or request.method != "GET":
        segment = request.path.rsplit("/", 1)[-1]
        return graph_error(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
    devices: list[dict[str, Any]] = list(state.get("intune") or [])
    known = {name.lower(): name for name in MANAGED_DEVICE_PROPERTIES}
    known.update({name.lower(): name for device in devices for name in device})
    names = [n.strip() for n in request.query.get("$select", [""])[0].split(",") if n.strip()]
    unknown = [name for name in names if name.lower() not in known]
    if unknown:
        why = f"Could not find a property named '{unknown[0]}' on type '{GRAPH_TYPE}'."
        return graph_error(400, "BadRequest", why)
    selected = ["id", *(known[n.lower()] for n in names if n.lower() != "id")] if names else None
    if match.group(1) is not None:
        return _graph_device(request, devices, match.group(1), selected)
    return _graph_list(request, state, devices, selected)


def _graph_device(
    request: Request, devices: list[dict[str, Any]], wanted: str, selected: list[str] | None
) -> Answer:
    device = next((d for d in devices if str(d.get("id")) == wanted), None)
    if device is None:
        why = f"Resource '{wanted}' does not exist or one of its queried reference-property "
        why += "objects are not present."
        return graph_error(404, "ResourceNotFound", why)
    context = f"{request.origin}{GRAPH_CONTEXT}/$entity"
    return Answer(200, {"@odata.context": context, **_project(device, selected)}, {}, GRAPH_JSON)


def _graph_list(
    request: Request, state: State, devices: list[dict[str, Any]], selected: list[str] | None
) -> Answer:
    offset = _skiptoken_offset(request.query.get("$skiptoken", [None])[0])
    if offset is None:
        return graph_error(400, "BadRequest", "The $skiptoken is not valid.")
    size = _page_size(state, "intune", default=len(devices) or 1)
    if "$top" in request.query and request.query["$top"][0].isdigit():
        size = min(size, max(1, int(request.query["$top"][0])))  # server-driven: never more
    value = [_listed(device, selected) for device in devices[offset : offset + size]]
    body: dict[str, Any] = {"@odata.context": f"{request.origin}{GRAPH_CONTEXT}", "value": value}
    if offset + size < len(devices):
        query = {k: v[0] for k, v in request.query.items() if k != "$skiptoken"}
        query["$skiptoken"] = _skiptoken(offset + size)
        body["@odata.nextLink"] = f"{request.origin}{request.path}?{urlencode(query, safe='$,')}"
    return Answer(200, body, {}, GRAPH_JSON)


def _project(device: Mapping[str, Any], selected: list[str] | None) -> dict[str, Any]:
    """The device with only the selected properties (null when it lacks one), id always."""
    if selected is None:
        return dict(device)
    return {name: device.get(name) for name in selected}


def _listed(device: Mapping[str, Any], selected: list[str] | None) -> dict[str, Any]:
    """A device as a list shows it: its MAC addresses null even when selected."""
    item = _project(device, selected)
    for name in LIST_ONLY_NULL:
        if selected is None or name in item:
            item[name] = None
    return item


def _skiptoken(offset: int) -> str:
    raw = json.dumps({"o": offset, "n": secrets.token_hex(4)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _skiptoken_offset(token: str | None) -> int | None:
    if token is None:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["o"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return offset if isinstance(offset, int) and offset >= 0 else None


# --- Jamf Pro -----------------------------------------------------------------------------


def jamf_error(status: int, code: str, description: str, field_name: str | None = None) -> Answer:
    error = {"code": code, "description": description, "id": "0", "field": field_name}
    return Answer(status, {"httpStatus": status, "errors": [error]})


def _jamf_token(request: Request, state: State, tokens: Tokens) -> Answer:
    if request.method != "POST":
        return jamf_error(405, "METHOD_NOT_ALLOWED", "Method Not Allowed")
    form = {name: values[0] for name, values in request.form.items()}
    if form.get("grant_type") != "client_credentials":
        return Answer(400, {"error": "unsupported_grant_type"})
    if not all(_same(form, state, "jamf", name) for name in ("client_id", "client_secret")):
        return Answer(401, {"error": "invalid_client"})
    ttl = int(state.get("token_ttl") or 3600)
    token = tokens.issue("jamf", ttl)
    body = {"access_token": token, "scope": "api-role:1", "token_type": "Bearer"}
    return Answer(200, {**body, "expires_in": ttl})


def _jamf(request: Request, state: State, tokens: Tokens) -> Answer:
    if request.path == "/jamf/api/oauth/token":
        return _jamf_token(request, state, tokens)
    if not tokens.valid("jamf", request.authorization):
        return jamf_error(401, "INVALID_TOKEN", "Unauthorized")
    if request.path != "/jamf/api/v1/computers-inventory" or request.method != "GET":
        return jamf_error(404, "NOT_FOUND", "Not Found")
    sections = request.query.get("section") or ["GENERAL"]
    for section in sections:
        if section not in JAMF_KEYS:
            return jamf_error(400, "INVALID_FIELD", f"Invalid section: {section}", "section")
    page, size = _int(request.query, "page", 0), _int(request.query, "page-size", None)
    if size is None:
        size = _page_size(state, "jamf", default=100)  # Jamf's default
    if page is None or page < 0 or size < 1:
        return jamf_error(400, "INVALID_PARAM", "page and page-size must be integers", "page")
    records = _sorted(state.get("jamf") or [], request.query.get("sort", ["general.name:asc"])[0])
    wanted = {JAMF_KEYS[section] for section in sections}
    results = [
        {"id": str(record.get("id")), "udid": record.get("udid")}
        | {key: record.get(key) if key in wanted else None for key in JAMF_KEYS.values()}
        for record in records[page * size : (page + 1) * size]
    ]
    return Answer(200, {"totalCount": len(records), "results": results})


# --- Fleet --------------------------------------------------------------------------------


def fleet_error(status: int, message: str) -> Answer:
    return Answer(status, {"message": message, "errors": [{"name": "base", "reason": message}]})


def _fleet(request: Request, state: State) -> Answer:
    """Fleet's API token is static: it is the state's, until the state changes it."""
    scheme, _, given = (request.authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not _same({"token": given}, state, "fleet", "token"):
        return fleet_error(401, "Authentication required")
    if request.method != "GET" or not FLEET_HOSTS.fullmatch(request.path):
        return fleet_error(404, "Resource Not Found")
    page, per_page = _int(request.query, "page", 0), _int(request.query, "per_page", None)
    if per_page is None:
        per_page = _page_size(state, "fleet", default=1_000_000)  # Fleet's default limit
    if page is None or page < 0 or per_page < 1:
        return fleet_error(400, "invalid page or per_page")
    key = request.query.get("order_key", ["id"])[0]
    direction = request.query.get("order_direction", ["asc"])[0]
    hosts = _sorted(state.get("fleet") or [], f"{key}:{direction}")
    policies = request.query.get("populate_policies", ["false"])[0].lower() == "true"
    chosen = hosts[page * per_page : (page + 1) * per_page]
    listed = [{k: v for k, v in host.items() if policies or k != "policies"} for host in chosen]
    return Answer(200, {"hosts": listed})


# --- shared -------------------------------------------------------------------------------


def _credentials(state: State, vendor: str) -> Mapping[str, Any]:
    creds = (state.get("credentials") or {}).get(vendor) or {}
    return creds if isinstance(creds, Mapping) else {}


def _same(form: Mapping[str, str], state: State, vendor: str, name: str) -> bool:
    """Whether the client sent the state's credential; an empty or unset one matches nothing."""
    given, expected = form.get(name, ""), _credentials(state, vendor).get(name)
    if not isinstance(expected, str) or not expected:
        return False
    return secrets.compare_digest(given.encode(), expected.encode())  # any text, not only ASCII


def _page_size(state: State, vendor: str, *, default: int) -> int:
    size = (state.get("page_size") or {}).get(vendor)
    return int(size) if size else default


def _int(query: Query, name: str, default: int | None) -> int | None:
    if name not in query:
        return default
    text = query[name][0]
    return int(text) if text.lstrip("-").isdigit() else None


def _sorted(records: list[Mapping[str, Any]], sort: str) -> list[Mapping[str, Any]]:
    """Records sorted by `key:asc|desc` (dotted keys reach into sections; ids sort as numbers)."""
    key, _, direction = sort.split(",", maxsplit=1)[0].partition(":")

    def value(record: Mapping[str, Any]) -> tuple[int, int, str]:
        found: Any = record
        for part in key.split("."):
            found = found.get(part) if isinstance(found, Mapping) else None
        text = "" if found is None else str(found)
        return (0, int(text), "") if text.isdigit() else (1, 0, text.lower())

    return sorted(records, key=value, reverse=direction.lower() == "desc")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
