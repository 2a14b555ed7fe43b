"""MAC addresses: one text form, so an inventory's MAC and a lease's MAC compare as strings.

Inventories export MACs the way their vendor prints them (`AA-BB-CC-DD-EE-FF` from
Windows, `aabb.ccdd.eeff` from Cisco, `AABBCCDDEEFF` from Intune, `AA:BB:...` from
everything else); leases and
the kernel print `aa:bb:cc:dd:ee:ff`. Anything else is refused rather than guessed
at: a MAC read wrongly admits the wrong device or none.
"""

from __future__ import annotations

import re

_COLONS = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_DASHES = re.compile(r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}")
_DOTS = re.compile(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}")
_BARE = re.compile(r"[0-9a-f]{12}")


class InvalidMacError(ValueError):
    """Not a unicast Ethernet MAC address; the message is written for the admin."""


def normalise_mac(text: str) -> str:
    """Return `aa:bb:cc:dd:ee:ff` for a MAC in one of the four usual forms, or raise.

    Group (multicast, broadcast) and all-zero addresses are refused too: no device sends
    from them, so an inventory or a map that names one has a mistake in it.
    """
    lowered = text.strip().lower()
    if _COLONS.fullmatch(lowered) or _DASHES.fullmatch(lowered):
        digits = lowered.replace(":", "").replace("-", "")
    elif _DOTS.fullmatch(lowered):
        digits = lowered.replace(".", "")
    elif _BARE.fullmatch(lowered):
        digits = lowered
    else:
        raise InvalidMacError(f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(digits[:2], 16) & 0x01:
        raise InvalidMacError(f"{text!r} is a multicast or broadcast address, not a device's")
    if digits == "0" * 12:
        raise InvalidMacError(f"{text!r} is the all-zero address, not a device's")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def is_randomised(mac: str) -> bool:
    """Whether a normalised MAC is locally administered: most likely a randomised one.

    Phones and laptops pick a random MAC per network (and may rotate it), so an
    inventory that lists one will stop matching when the device picks another; `check`
    warns about them. Bit 1 of the first octet marks a locally administered address.
    """
    return bool(int(mac[:2], 16) & 0x02)
