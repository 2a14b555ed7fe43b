"""A real OpenSSH server in a lab namespace, with throwaway host keys, for the git-aware probe.

    with start_sshd(server_ns, workdir, [("198.51.100.10", 22), ("198.51.100.10", 443)]) as sshd:
        pinned = sshd.known_hosts(["198.51.100.10", "[198.51.100.10]:443"])
        sshd.rotate_host_keys()   # now the pinned keys no longer match: someone in the path

It listens where ssh.bitbucket.org and altssh.bitbucket.org would, and nobody ever logs in:
a probe stops after the key exchange, so the config allows no authentication at all
(`AuthorizedKeysFile none`, no passwords, no PAM). Host keys are ed25519 and ECDSA, as
Bitbucket offers, made fresh per server by `ssh-keygen` (RSA would cost seconds).

Quirks: sshd re-executes itself per connection, so it must be started by its absolute path;
it refuses to start without its privilege separation directory `/run/sshd` (normally made by
the init script, which never runs here), so that is created if missing; `-D -e` keeps it in
the foreground with its log on stderr, which goes to `sshd.log` in the server's directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from lab.daemons import Daemon, host_port, spawn, wait_accepting
from lab.errors import LabError
from lab.netns import run

SSHD = "/usr/sbin/sshd"  # Debian package openssh-server; absolute: sshd re-execs itself
SSH_KEYGEN = "ssh-keygen"  # Debian package openssh-client
PRIVSEP_DIR = Path("/run/sshd")
KEY_TYPES = ("ed25519", "ecdsa")


@dataclass
class SshdProcess:
    """A running sshd; `stop()` or a `with` block ends it (and its connection children)."""

    netns: str
    directory: Path
    listen: tuple[tuple[str, int], ...]
    config: Path
    daemon: Daemon | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    def host_key(self, key_type: str) -> Path:
        """The private host key file of key_type (`.pub` beside it)."""
        return self.directory / f"ssh_host_{key_type}_key"

    def known_hosts(self, names: Sequence[str]) -> str:
        """known_hosts lines (`name keytype base64`) for the current keys, one per name and key.

        Names are written as given: `host` for port 22, `[host]:port` otherwise, which is how
        ssh-keyscan prints them, so its output compares line for line.
        """
        keys = []
        for key_type in KEY_TYPES:
            algorithm, blob = self.host_key(key_type).with_suffix(".pub").read_text().split()[:2]
            keys.append(f"{algorithm} {blob}")
        return "".join(f"{name} {key}\n" for name in names for key in keys)

    def rotate_host_keys(self) -> None:
        """Replace every host key and restart sshd on the same listeners."""
        self.stop()
        _generate_host_keys(self)
        self._start()

    def stop(self) -> None:
        """Stop sshd promptly; its per-connection children go too."""
        if self.daemon is not None:
            self.daemon.stop()

    def _start(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        argv = [SSHD, "-D", "-e", "-f", str(self.config)]
        # Its per-connection children first: sshd reaps them, init here only seconds later.
        self.daemon = spawn(self.netns, "sshd", argv, self.log_path, children_first=True)
        try:
            wait_accepting(self.netns, self.daemon, self.listen)
        except BaseException:
            self.daemon.stop()
            raise

    def __enter__(self) -> SshdProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_sshd(netns: str, directory: Path, listen: Sequence[tuple[str, int]]) -> SshdProcess:
    """Start sshd in netns on every (address, port) and wait until each accepts TCP."""
    if not listen:
        raise LabError("sshd needs at least one listener")
    directory.mkdir(parents=True, exist_ok=True)
    sshd = SshdProcess(netns, directory, tuple(listen), directory / "sshd_config")
    _generate_host_keys(sshd)
    sshd.config.write_text(_config(sshd))
    sshd._start()
    return sshd


def _generate_host_keys(sshd: SshdProcess) -> None:
    for key_type in KEY_TYPES:
        key = sshd.host_key(key_type)
        # ssh-keygen asks before overwriting (and fails without a terminal): clear the way.
        for path in (key, key.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        comment = f"repogate-lab-{key_type}"
        run([SSH_KEYGEN, "-q", "-N", "", "-t", key_type, "-C", comment, "-f", str(key)])


def _config(sshd: SshdProcess) -> str:
    lines = [f"ListenAddress {host_port(address, port)}" for address, port in sshd.listen]
    lines += [f"HostKey {sshd.host_key(key_type)}" for key_type in KEY_TYPES]
    lines += [
        f"PidFile {sshd.directory / 'sshd.pid'}",
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AuthorizedKeysFile none",
        "PrintMotd no",
        "UseDNS no",
        "LogLevel VERBOSE",
    ]
    return "\n".join(lines) + "\n"
