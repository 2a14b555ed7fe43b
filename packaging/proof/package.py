"""The package under proof: its names, and where the proof stages files in the container.

Shared by the per-run root (which stages the .deb) and by the checks.
"""

from __future__ import annotations

# Inside the container the package files are staged here: not /tmp (nspawn
# mounts a tmpfs over it) and not /root (apt's _apt user could not read them).
STAGE = "/srv/repogate-proof"
PACKAGE = "repogate"
UNIT = "repogate.service"
TABLE = "repogate"
CONFIG = "/etc/repogate/repogate.toml"
