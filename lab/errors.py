"""The lab's one exception.

    LabError   a lab step (an `ip` command, a server, a probe) failed; the message carries the
               argv and the command's own stderr, because that is what explains a lab failure.

Anything else (KeyboardInterrupt, SystemExit, bugs) passes through untouched, after cleanup.
"""

from __future__ import annotations


class LabError(RuntimeError):
    """A lab step failed; the message says which command and why."""
