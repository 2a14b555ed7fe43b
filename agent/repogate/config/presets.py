"""Destination presets: code hosts whose addresses repogate knows how to follow.

A preset names the hosts to resolve, the ports, and the vendor's published
IP-range feed with the filter the vendor recommends. Both are unioned, because
the feed misses ranges DNS returns (Bitbucket's IPv6 among them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    hosts: tuple[str, ...]
    ports: tuple[int, ...]
    feed_url: str
    feed_products: tuple[str, ...]
    feed_directions: tuple[str, ...]


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
    ),
}
