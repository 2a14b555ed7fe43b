"""Inventory records: a CSV or JSON export of devices, parsed into `DeviceRecord`s.

An inventory is written by people and by MDM exports, so a bad row is rejected with
its row number and reason and the rest applies (like a bad entry in an address
list); only a file that is not an inventory at all raises `SourceError`, so the
group keeps what it enforces now instead of losing every device.

CSV: a header row names the columns (case and surrounding spaces do not matter,
unknown columns are ignored); several MACs, keys or names in one cell are separated
by spaces. "row N" is the file's line N, the header being row 1, which is also the
row a spreadsheet shows. JSON: a list of objects with the same keys; several values
are a list or a space-separated string; an object is located as `$[i]`, as in the
JSON address lists.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from repogate.addresses import Rejected
from repogate.errors import SourceError
from repogate.sources.devices import DeviceRecord
from repogate.sources.devices.macs import InvalidMacError, is_randomised, normalise_mac

__all__ = ["ParsedInventory", "is_randomised", "parse_inventory", "qualifies", "row_identities"]

REQUIRED = ("device", "compliant")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_CN_MAX = 64  # X.509's upper bound for a certificate's common name (RFC 5280)


@dataclass(frozen=True)
class ParsedInventory:
    records: tuple[DeviceRecord, ...]
    rejected: tuple[Rejected, ...]


class _RowError(ValueError):
    """A row cannot be used; the message names the column and the problem."""


def parse_inventory(data: str | bytes) -> ParsedInventory:
    """Parse a CSV or JSON inventory, told apart by its first character (`[` is JSON).

    A device named on several rows is rejected on all of them: the rows may disagree
    (one compliant, one not) and nothing says which is right, so neither admits it.
    """
    text = _decode(data)
    stripped = text.lstrip()
    if not stripped:
        raise SourceError("the inventory is empty (no header row)")
    json_like = stripped[0] in "[{"
    rows = list(_json_rows(stripped) if json_like else _csv_rows(text))
    records: list[tuple[str, DeviceRecord]] = []
    rejected: list[Rejected] = []
    for where, raw in rows:
        try:
            records.append((where, _record(raw)))
        except _RowError as exc:
            rejected.append(Rejected(where, _describe(raw), str(exc)))
    seen: dict[str, list[str]] = {}
    for where, record in records:
        seen.setdefault(record.device, []).append(where)
    kept: list[DeviceRecord] = []
    for where, record in records:
        places = seen[record.device]
        if len(places) == 1:
            kept.append(record)
            continue
        others = ", ".join(place for place in places if place != where)
        reason = f"device {record.device!r} is also on {others}: none of its rows is used"
        rejected.append(Rejected(where, record.device, reason))
    return ParsedInventory(tuple(kept), tuple(rejected))


def _decode(data: str | bytes) -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
        except UnicodeDecodeError as exc:
            raise SourceError(f"the inventory is not UTF-8 text: {exc}") from exc
    if "\x00" in text:
        raise SourceError("the inventory is binary, not CSV or JSON text")
    return text.removeprefix("\ufeff")


def _csv_rows(text: str) -> Iterator[tuple[str, Mapping[str, object]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except csv.Error as exc:
        raise SourceError(f"the inventory's header row is not CSV: {exc}") from exc
    _check_columns(header, "its header row")
    line = reader.line_num
    while True:
        start = line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # Only a cell over the csv module's size limit: the file is not an inventory.
            raise SourceError(f"row {start}: not CSV ({exc})") from exc
        line = reader.line_num
        if not cells or all(not cell.strip() for cell in cells):
            continue  # blank rows: spreadsheets leave them, they mean nothing
        if len(cells) != len(header):
            detail = f"{len(cells)} cells where the header has {len(header)}"
            yield f"row {start}", {"": _RowError(detail), "device": cells[0]}
            continue
        yield f"row {start}", dict(zip(header, cells, strict=True))


def _json_rows(text: str) -> Iterator[tuple[str, Mapping[str, object]]]:
    try:
        document: Any = json.loads(text)
    except ValueError as exc:
        raise SourceError(f"the inventory is neither CSV nor valid JSON: {exc}") from exc
    if not isinstance(document, list):
        raise SourceError("a JSON inventory must be a list of objects, one per device")
    if document and not any(
        isinstance(item, dict) and all(key in _keys(item) for key in REQUIRED) for item in document
    ):
        raise SourceError("no object in the JSON inventory has both 'device' and 'compliant'")
    for index, item in enumerate(document):
        where = f"$[{index}]"
        if not isinstance(item, dict):
            yield where, {"": _RowError(f"not an object but {type(item).__name__}")}
        else:
            yield where, {str(key).strip().lower(): value for key, value in item.items()}


def _keys(item: Mapping[Any, object]) -> set[str]:
    return {str(key).strip().lower() for key in item}


def _check_columns(header: list[str], where: str) -> None:
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        names = " and ".join(repr(name) for name in missing)
        raise SourceError(f"not a device inventory: {where} has no {names} column")
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise SourceError(f"the inventory names column {repeated[0]!r} twice")


def _describe(raw: Mapping[str, object]) -> str:
    device = raw.get("device")
    return device.strip() if isinstance(device, str) else ""


def _record(raw: Mapping[str, object]) -> DeviceRecord:
    problem = raw.get("")
    if isinstance(problem, _RowError):
        raise problem
    device = _text(raw, "device")
    if not device:
        raise _RowError("device: empty (every row needs the device's name)")
    return DeviceRecord(
        device=device,
        compliant=_compliant(raw.get("compliant")),
        owner=_text(raw, "owner"),
        group=_text(raw, "group"),
        last_seen=_time(raw, "last_seen"),
        expires=_time(raw, "expires"),
        **row_identities(raw).__dict__,
    )


@dataclass(frozen=True)
class Identities:
    macs: tuple[str, ...]
    wireguard: tuple[str, ...]
    openvpn: tuple[str, ...]


def row_identities(raw: Mapping[str, object]) -> Identities:
    """A row's `macs`, `wireguard` and `openvpn` cells, checked and normalised;
    ValueError names the column and the value that is wrong."""
    return Identities(
        macs=tuple(_unique(_mac(value) for value in _values(raw, "macs"))),
        wireguard=tuple(_unique(_wireguard(value) for value in _values(raw, "wireguard"))),
        openvpn=tuple(_unique(_common_name(value) for value in _values(raw, "openvpn"))),
    )


def _text(raw: Mapping[str, object], key: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _RowError(f"{key}: expected text, got {type(value).__name__}")
    return value.strip()


def _compliant(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    shown = "missing" if value is None or word == "" else repr(value)
    raise _RowError(f"compliant: {shown}, expected true/false, yes/no or 1/0")


def _time(raw: Mapping[str, object], key: str) -> float | None:
    text = _text(raw, key)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _RowError(f"{key}: {text!r} is not an ISO 8601 date and time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # exports without a zone are UTC far more often
    return moment.timestamp()


def _values(raw: Mapping[str, object], key: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise _RowError(f"{key}: expected a list of strings or a space-separated string")


def _mac(text: str) -> str:
    try:
        return normalise_mac(text)
    except InvalidMacError as exc:
        raise _RowError(f"macs: {exc}") from exc


def _wireguard(text: str) -> str:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _RowError(f"wireguard: {text!r} is not base64 ({exc})") from exc
    if len(key) != 32:
        raise _RowError(f"wireguard: {text!r} is {len(key)} bytes, a public key is 32")
    return base64.b64encode(key).decode()  # the form `wg show` prints


def _common_name(text: str) -> str:
    if len(text) > _CN_MAX:
        raise _RowError(f"openvpn: {text[:20]!r}... is longer than {_CN_MAX} characters")
    if any(not char.isprintable() for char in text):
        raise _RowError(f"openvpn: {text!r} holds control characters")
    return text


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def qualifies(record: DeviceRecord, *, now: float, max_age: float | None) -> tuple[bool, str]:
    """Whether the record makes its device compliant at `now`, and why, for an admin.

    `max_age` bounds how old `last_seen` may be: an inventory that stopped hearing from
    a device cannot vouch for it. With `max_age` set, a record without `last_seen`
    does not qualify (nothing says the inventory has heard from it at all).
    """
    if not record.compliant:
        return False, record.refusal or "non-compliant per inventory"
    if record.expires is not None and now >= record.expires:
        return False, f"record expired at {_when(record.expires)}"
    if max_age is not None:
        if record.last_seen is None:
            missing = "last_seen" if record.seen_as == "last seen" else record.seen_as  # CSV column
            return False, f"no {missing} in the inventory, and max_age {_span(max_age)} needs one"
        age = now - record.last_seen
        if age > max_age:
            when = f" ({_when(record.last_seen)})" if record.seen_as != "last seen" else ""
            return False, f"{record.seen_as} {_ago(age)}{when}, older than max_age {_span(max_age)}"
    details = ["compliant per inventory"]
    if record.last_seen is not None:
        details.append(f"{record.seen_as} {_ago(max(0.0, now - record.last_seen))}")
    if record.expires is not None:
        details.append(f"until {_when(record.expires)}")
    return True, ", ".join(details)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    """Coarse, as people say it: "40 s ago", "12 min ago", "5 h ago", "9 days ago"."""
    if seconds < 120:
        return f"{int(seconds)} s ago"
    if seconds < 2 * 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


def _span(seconds: float) -> str:
    """A duration as a config writes it: 7d, 36h, 90m, 45s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
