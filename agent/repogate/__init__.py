"""repogate: only approved devices reach your code host, enforced with nftables."""

__version__ = "0.1.0"
