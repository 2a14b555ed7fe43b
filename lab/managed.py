"""A lab server as a context manager: started on `with`, stopped on the way out.

The servers the tests run (dnsmasq, BIND, the slow DNS relay) each have `start` and
`stop`; this gives them the `with` form once, so a failing test still stops them.
"""

from __future__ import annotations

from typing import Self


class Managed:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
