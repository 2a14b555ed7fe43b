"""Files their server rewrites in place: dnsmasq's leases, OpenVPN's status file.

Both truncate and write the file anew while we may be reading it, so a read can meet a
rewrite half done: cut short, or the new head glued to the old tail. One policy for
both readers: read again after a pause, a few times; a file still not whole then is
cut short for good (a full disk) and its reader fails, so the group keeps its last
good entries instead of revoking every device whose line came after the cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

READ_ATTEMPTS = 3  # reads of a file found cut short or torn, REREAD_PAUSE seconds apart
REREAD_PAUSE = 0.05
CUT_SHORT = (
    f"in {READ_ATTEMPTS} reads {REREAD_PAUSE:g} s apart (cut short: a full disk, or being "
    "rewritten)"
)

T = TypeVar("T")


def read_whole(read: Callable[[], T], whole: Callable[[T], bool]) -> T:
    """`read()` until `whole` accepts it, at most READ_ATTEMPTS times; else the last read,
    for the caller to judge."""
    for _ in range(READ_ATTEMPTS - 1):
        value = read()
        if whole(value):
            return value
        time.sleep(REREAD_PAUSE)
    return read()
