"""The exceptions repogate raises at its boundaries.

    RepogateError                 anything the CLI reports and maps to an exit code
    ├── ConfigError               the config is invalid; carries every problem found (exit 2)
    ├── NftError                  libnftables refused or failed (exit 1)
    │   ├── NftUnavailableError   the python3-nftables bindings or libnftables are missing
    │   └── NftPermissionError    no CAP_NET_ADMIN in this network namespace
    ├── NotOwnedTableError        the named table exists but repogate did not create it
    ├── SnapshotError             a preset's packaged IP-range snapshot is unreadable
                                  (config.presets; a packaging bug)
    └── SourceError               a client source could not be read or parsed (its group
                                  keeps what the kernel enforces now)

Third-party errors are translated where they arise (`raise ... from exc`), so the
rest of the package only ever sees these.
"""

from __future__ import annotations

from dataclasses import dataclass


class RepogateError(Exception):
    """Base of every error the CLI knows how to report."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in the config, located by its key path (`clients[0].addresses[3]`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(RepogateError):
    """The config is invalid. Nothing was changed."""

    def __init__(self, problems: list[ConfigProblem], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class NftError(RepogateError):
    """libnftables rejected a command or transaction; the kernel is unchanged."""


class NftUnavailableError(NftError):
    """The libnftables bindings cannot be loaded."""


class NftPermissionError(NftError):
    """The process may not change nftables here (needs CAP_NET_ADMIN)."""


class NotOwnedTableError(RepogateError):
    """A table with the configured name exists but does not carry repogate's marker."""


class SourceError(RepogateError):
    """A source failed as a whole (unreadable, unparsable, too large).

    `wait`: seconds the remote asked us not to ask again for (an HTTP 429's
    Retry-After), counted from when the failure was raised; 0 when it did not say.
    """

    wait: float = 0.0
