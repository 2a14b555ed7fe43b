"""BIND (`named`) serving one zone, for what dnsmasq will not serve: a broken zone and CNAME loops.

dnsmasq refuses to start with a CNAME loop ("CNAME loop involving ...") and never answers
SERVFAIL for its own data, so the faults that need them run Debian's bind9 in a lab
namespace. `named` answers a CNAME loop in its zone with SERVFAIL and the looping records
("query iterations limit reached"); a zone that fails to load is answered with SERVFAIL.
A reload (SIGHUP) with a broken zone *file* keeps serving the old zone, so `break_zone`
points the zone at another file instead: a zone whose file changed and fails to load is
not loaded at all, as after a bad deploy and restart, without the restart.

Like lab.dns.DnsServer it runs in the foreground (`-g`: logs to stderr, no pid file, no
user change, no control channel), inside a namespace or on the caller's loopback, and is
always stopped on the way out.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError
from lab.managed import Managed
from lab.netns import in_netns

NAMED = "named"
START_TIMEOUT = 10.0
READY = "running"  # named logs it after every (re)load, once its zones are loaded or failed


@dataclass
class BindServer(Managed):
    """named, authoritative for `zone`: `hosts` (name -> addresses), `cnames` (alias -> target)."""

    workdir: Path
    netns: str | None = None
    address: str = "127.0.0.1"
    port: int = 53
    zone: str = "lab.test"
    ttl: int = 1  # every record's, and the SOA's negative TTL
    hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cnames: dict[str, str] = field(default_factory=dict)
    broken: bool = False  # serving the broken zone file (named answers SERVFAIL)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    serial: int = field(default=0, init=False)

    @property
    def log_file(self) -> Path:
        return self.workdir / "named.log"

    def config(self) -> str:
        zone_file = "broken.zone" if self.broken else "zone"
        return (
            "options {\n"
            f'  directory "{self.workdir}";\n'
            f'  managed-keys-directory "{self.workdir}";\n'
            "  pid-file none;\n"
            "  session-keyfile none;\n"
            f"  listen-on port {self.port} {{ {self.address}; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion no;\n"
            "};\n"
            "controls { };\n"
            f'zone "{self.zone}" {{ type primary; file "{zone_file}"; }};\n'
        )

    def zone_text(self) -> str:
        self.serial += 1  # named reloads a zone on SIGHUP only if its serial grew
        origin = f"{self.zone}."
        lines = [
            f"$TTL {self.ttl}",
            f"{origin} IN SOA ns.{origin} admin.{origin} {self.serial} 60 60 600 {self.ttl}",
            f"{origin} IN NS ns.{origin}",
            f"ns.{origin} IN A {self.address}",
        ]
        for name, addresses in self.hosts.items():
            for address in addresses:
                lines.append(f"{name}. IN {'AAAA' if ':' in address else 'A'} {address}")
        lines += [f"{alias}. IN CNAME {target}." for alias, target in self.cnames.items()]
        return "\n".join(lines) + "\n"

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if shutil.which(NAMED) is None:
            raise LabError("named is not installed (apt install bind9)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write()
        # A zone with a CNAME at its apex: "CNAME and other data", so it never loads.
        (self.workdir / "broken.zone").write_text(
            f"$TTL {self.ttl}\n{self.zone}. IN SOA ns.{self.zone}. admin.{self.zone}. "
            f"1 60 60 600 {self.ttl}\n{self.zone}. IN CNAME elsewhere.example.\n"
        )
        argv = [NAMED, "-g", "-n", "1", "-c", str(self.workdir / "named.conf")]
        if self.netns is not None:
            argv = in_netns(self.netns, argv)
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # -- changes (each one reload) --------------------------------------------------------

    def set_records(
        self,
        hosts: Mapping[str, Sequence[str]] | None = None,
        cnames: Mapping[str, str | None] | None = None,
    ) -> None:
        """Change names (no addresses or target: the name goes) and reload the zone."""
        for name, addresses in (hosts or {}).items():
            if addresses:
                self.hosts[name] = tuple(addresses)
            else:
                self.hosts.pop(name, None)
        for alias, target in (cnames or {}).items():
            if target:
                self.cnames[alias] = target
            else:
                self.cnames.pop(alias, None)
        self.reload()

    def break_zone(self) -> None:
        """Serve the zone from a file that fails to load: named answers SERVFAIL."""
        failed = self.log().count("not loaded due to errors")
        self.broken = True
        self.reload()
        if self.log().count("not loaded due to errors") <= failed:
            raise LabError(f"named loaded the broken zone:\n{self.log()}")

    def mend_zone(self) -> None:
        self.broken = False
        self.reload()

    def reload(self) -> None:
        """Rewrite config and zone and make named re-read them (SIGHUP); wait until it has."""
        self._write()
        if self.process is None or self.process.poll() is not None:
            raise LabError("named is not running")
        before = self._readies()
        self.process.send_signal(signal.SIGHUP)  # `ip netns exec` execs, so this is named
        self._wait_ready(before + 1)

    def _write(self) -> None:
        for name, text in (("zone", self.zone_text()), ("named.conf", self.config())):
            temporary = self.workdir / f"{name}.tmp"
            temporary.write_text(text)
            temporary.replace(self.workdir / name)  # named never reads half a file

    def _readies(self) -> int:
        return sum(1 for line in self.log().splitlines() if line.endswith(f" {READY}"))

    def _wait_ready(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._readies() >= count:
                return
            if self.process is not None and self.process.poll() is not None:
                raise LabError(f"named exited {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise LabError(f"named was not ready in time:\n{self.log()}")
