"""Two things the daemon keeps up to date beside the table: the host's egress
addresses (which Bitbucket's IP allowlist must contain) and the boot ruleset
(the last enforced table, for nftables.service to load before the network is up).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from repogate.daemon.metrics import Metrics
from repogate.daemon.netlink import interface_addresses
from repogate.logs import event
from repogate.model import DesiredState
from repogate.nft.render import render_boot
from repogate.state import write_atomically

log = logging.getLogger("repogate")
REWRITE_EVERY = 10.0  # seconds between boot ruleset rewrites while changes keep coming


class EgressWatch:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.current: list[tuple[str, str]] = []

    def update(self, interfaces: list[str], *, log_always: bool) -> list[tuple[str, str]]:
        """Read the addresses; log them when they changed (or `log_always`)."""
        try:
            found = [(a.interface, a.address) for a in interface_addresses(interfaces)]
        except Exception as exc:  # netlink trouble must not stop enforcement
            log.warning("cannot read egress addresses: %s", exc)
            return self.current
        if log_always or found != self.current:
            listed = ", ".join(f"{i} {a}" for i, a in found)
            if not found:
                listed = (
                    "none found (no global address on "
                    + (", ".join(interfaces) or "any default-route interface")
                    + "; set agent.egress_interfaces to the interfaces traffic leaves by)"
                )
            event(
                log,
                logging.WARNING if not found or not log_always else logging.INFO,
                f"egress addresses (Bitbucket's IP allowlist must contain them): {listed}",
                egress=[{"interface": i, "address": a} for i, a in found],
            )
        self.current = found
        self.metrics.egress(found)
        return found


class BootRuleset:
    """state_dir/ruleset.nft, kept equal to the enforced table (see render_boot)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dirty = False
        self._written = 0.0

    def mark(self) -> None:
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def write(self, desired: DesiredState | None, *, force: bool = False) -> None:
        """Rewrite after a change, at most every REWRITE_EVERY seconds unless `force`."""
        if desired is None or not (self._dirty or force):
            return
        recent = time.monotonic() - self._written < REWRITE_EVERY
        if not force and self.path.exists() and recent:
            return  # written recently: the next reconcile or the stop writes it
        try:
            write_atomically(self.path, render_boot(desired))
        except OSError as exc:
            log.warning("could not write %s: %s", self.path, exc)
            return
        self._written = time.monotonic()
        self._dirty = False

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
