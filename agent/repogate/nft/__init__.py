"""Everything that speaks nftables: names, pure JSON builders, the kernel backend."""
