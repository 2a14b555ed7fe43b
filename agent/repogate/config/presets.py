"""Destination presets: code hosts whose addresses repogate knows how to follow.

A preset names the hosts to resolve, the ports, and the vendor's published
IP-range feed with the filter the vendor recommends. Both are unioned, because
the feed misses ranges DNS returns (Bitbucket's IPv6 among them).

A preset also ships a dated snapshot of the feed's ranges, served until the feed
first answers: without it, a first start with no network (or a lost state_dir)
would leave the destination's sets empty, and an empty destination gates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from repogate.addresses import InvalidEntryError, NormalisedEntries, normalise, parse_entry
from repogate.errors import RepogateError

PACKAGE = "repogate.config"  # where snapshot files live (pyproject.toml's package-data)
# The header line of a snapshot file that carries the feed document's creation time.
DATE_HEADER = "# feed creationDate:"


class SnapshotError(RepogateError):
    """A snapshot file shipped in the package is unreadable: a packaging bug."""


@dataclass(frozen=True)
class Snapshot:
    """A vendor's published ranges as of `taken`, shipped in the package."""

    entries: NormalisedEntries
    taken: datetime  # the feed document's creationDate, UTC
    source: str  # the packaged file, for messages

    @property
    def date(self) -> str:
        return self.taken.date().isoformat()

    @property
    def origin(self) -> str:
        """How served entries are labelled (lastgood.Staleness.origin)."""
        return f"snapshot {self.date}"


@dataclass(frozen=True)
class Preset:
    hosts: tuple[str, ...]
    ports: tuple[int, ...]
    feed_url: str
    feed_products: tuple[str, ...]
    feed_directions: tuple[str, ...]
    snapshot: Snapshot | None = None  # the feed's ranges until it first answers


def parse_snapshot(text: str, source: str) -> Snapshot:
    """Read a snapshot file: `#` comments (one of them dated), then one CIDR per line."""
    taken: datetime | None = None
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith(DATE_HEADER):
            stamp = line.removeprefix(DATE_HEADER).strip()
            try:
                taken = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
            except ValueError as exc:
                raise SnapshotError(f"{source}:{number}: {stamp!r} is not a date") from exc
            continue
        if not line or line.startswith("#"):
            continue
        try:
            entries.append(parse_entry(line))
        except InvalidEntryError as exc:
            raise SnapshotError(f"{source}:{number}: {exc}") from exc
    if taken is None:
        raise SnapshotError(f"{source}: no '{DATE_HEADER}' line")
    if not entries:
        raise SnapshotError(f"{source}: no ranges")
    return Snapshot(normalise(entries), taken, source)


def load_snapshot(name: str) -> Snapshot:
    """A snapshot file of this package (works from a wheel, a .deb or a checkout)."""
    resource = resources.files(PACKAGE).joinpath(name)
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise SnapshotError(f"cannot read the packaged {name}: {exc}") from exc
    return parse_snapshot(text, f"{PACKAGE}/{name}")


PRESETS: dict[str, Preset] = {
    # Atlassian advises no region filter: Bitbucket may serve from any region.
    "bitbucket": Preset(
        hosts=(
            "bitbucket.org",
            "api.bitbucket.org",
            "ssh.bitbucket.org",  # Bitbucket's dedicated SSH host since November 2026
            "altssh.bitbucket.org",  # SSH on port 443
        ),
        ports=(22, 443),
        feed_url="https://ip-ranges.atlassian.com/",
        feed_products=("bitbucket",),
        feed_directions=("ingress",),
        snapshot=load_snapshot("bitbucket-ranges.txt"),
    ),
}
