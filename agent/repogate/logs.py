"""Logging for the daemon: one line per event on stderr, for journald or a terminal.

Under systemd (JOURNAL_STREAM set) lines carry no timestamp of their own, since
journald adds one, and start with a `<N>` priority prefix that journald files
them under. journald reads a stream line by line, so every line of a multi-line
message carries the prefix: without it the lines after the first (the key paths
of an invalid config) would be filed at the stream's default, info. With
`log_format = "json"` each line is one JSON object with the event's fields, for
log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

FIELDS = "fields"  # the `extra` key carrying an event's structured fields


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log one event: a readable message plus structured fields for JSON output."""
    logger.log(level, message, extra={FIELDS: fields})


# sd-daemon(3) priority prefixes: journald strips them and files the line at that
# level, so `journalctl -u repogate -p warning` shows only what needs attention.
JOURNAL_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}
# Loggers of libraries that speak at WARNING about what is no problem for repogate.
QUIETED = {
    # Every job run at INFO, and "skipped: maximum number of running instances" at
    # WARNING, which a coalesced reconcile hits by design.
    "apscheduler": logging.ERROR,
    # "tcmsg: ... /proc/net/psched" at import: ProcSubset=pid hides it, and repogate
    # never touches tc.
    "pyroute2": logging.ERROR,
}


def journal_priority(level: int) -> int:
    """The syslog priority of a logging level; a level between two named ones rounds down."""
    for floor in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level >= floor:
            return JOURNAL_PRIORITY[logging.getLevelName(floor)]
    return JOURNAL_PRIORITY["DEBUG"]


class TextFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        if self.journal:
            prefix = f"<{journal_priority(record.levelno)}>"
            return "\n".join(prefix + part for part in line.splitlines() or [""])
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp} {line}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: Mapping[str, Any] = getattr(record, FIELDS, {})
        document.update(fields)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, separators=(",", ":"))


class QuietLibraries(logging.Filter):
    """Drops QUIETED libraries' records below their level, at the handler.

    Setting the loggers' levels is not enough: pyroute2 resets its logger to level 0
    when it is imported (pyroute2/config/log.py), which happens after start-up, and
    its "tcmsg: /proc/net/psched" warning then reached the journal on every start
    under the unit's ProcSubset=pid (found by the booted-install proof).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, level in QUIETED.items():
            if record.name == name or record.name.startswith(name + "."):
                return record.levelno >= level
        return True


def setup_logging(
    log_format: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> None:
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journal="JOURNAL_STREAM" in env))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler.addFilter(QuietLibraries())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name, level in QUIETED.items():
        logging.getLogger(name).setLevel(level)
