"""Commands on the build host: run with output captured, tools installed, a lock.

A failed host command raises Failed with its output, so setup steps need no
error handling of their own and a setup failure says what went wrong.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .report import Failed, argv_text, first_lines

# The PATH for commands in the chroot and the container: the caller's may lack
# the sbin directories, or hold ones that do not exist there.
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# apt and dpkg must never stop to ask (a debconf prompt, a changelog pager).
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}


def run_host(
    argv: Sequence[str | os.PathLike[str]], *, timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """A host command; output captured; raises with its output on failure."""
    result: subprocess.CompletedProcess[str] = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,  # the output goes into the failure message below
        **kwargs,
    )
    if result.returncode != 0:
        raise Failed(
            f"`{argv_text(argv)}` exited {result.returncode}: "
            f"{first_lines(result.stderr or result.stdout, 5)}"
        )
    return result


def require_host_tools() -> None:
    """debootstrap and systemd-nspawn are not on a build host by default."""
    if shutil.which("debootstrap") and shutil.which("systemd-nspawn"):
        return
    env = {**os.environ, **APT_ENV}
    run_host(
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "debootstrap",
            "systemd-container",
        ],
        env=env,
    )


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise runs around the shared cache (building it, syncing archives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
