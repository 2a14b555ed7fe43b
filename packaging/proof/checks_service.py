"""The checks on the running service: what it shows, what it holds, how it stops.

Status line, metrics, the nftables table, its user and capabilities, a quiet
journal, reloads good and bad, and a prompt stop while a source hangs (the
daemon must not wait for its fetch to time out).
"""

from __future__ import annotations

import re
import time

from .capabilities import CAP_NET_ADMIN, capability_names, parse_status
from .package import PACKAGE, UNIT
from .report import Failed, first_lines
from .session import ProofSession

METRICS_URL = "http://127.0.0.1:10419/metrics"
HANG_ADDRESS = ("127.0.0.1", 8444)
STOP_LIMIT = 5.0

# A network source that accepts connections and never answers: the daemon's
# HTTPS fetch hangs in the TLS handshake until its timeout.
HANG_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
held = []
while True:
    connection, _ = server.accept()
    held.append(connection)  # keep it open, never send a byte
"""
FETCH_URL = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
    sys.stdout.write(response.read().decode())
"""

# Warnings the shipped config must produce in a container whose network is only
# loopback: the preset's DNS names and feed cannot be reached and no route leads
# to Bitbucket. They are shown, not failed; any other warning fails the check.
EXPECTED_WITHOUT_NETWORK = tuple(
    re.compile(pattern)
    for pattern in (
        r"^warning: source destination:\S+ failed: .*"
        r"(Network is unreachable|cannot resolve|name resolution)",
        r"^warning: egress: PROBLEM: no route to Bitbucket at all",
        r"^warning: egress interface addresses: none found",
    )
)


class ServiceChecks(ProofSession):
    """The enabled service, from its status line to a stop under a hanging fetch."""

    def status_line(self) -> str:
        out = self.c.run("systemctl", "status", "--no-pager", "--full", UNIT).stdout
        for line in out.splitlines():
            if line.strip().startswith("Status:"):
                return line.strip()
        raise Failed(f"no Status: line in `systemctl status`: {first_lines(out, 8)}")

    def metrics(self) -> str:
        body = ""

        def answers() -> bool:
            nonlocal body
            result = self.c.run("python3", "-c", FETCH_URL, METRICS_URL, timeout=15)
            body = result.stdout
            return result.returncode == 0

        self.wait_until(f"{METRICS_URL} answering", answers, 15)
        info = [line for line in body.splitlines() if line.startswith("repogate_build_info")]
        if not info:
            raise Failed(f"the page has no repogate_build_info: {first_lines(body, 3)}")
        return info[0]

    def table_exists(self) -> str:
        rules = self.ruleset()
        sets = len(re.findall(r"^\s*set ", rules, re.M))
        chains = len(re.findall(r"^\s*chain ", rules, re.M))
        return f"{chains} chains, {sets} sets"

    def process_identity(self) -> str:
        pid = self.main_pid()
        status = parse_status(self.c.must("cat", f"/proc/{pid}/status"))
        uids = status["Uid"].split()
        cap_eff = int(status["CapEff"], 16)
        facts = (
            f"pid {pid} {status['Name']}, Uid {' '.join(uids)}, "
            f"CapEff 0x{cap_eff:x} ({capability_names(cap_eff)}), "
            f"CapPrm {capability_names(int(status['CapPrm'], 16))}, "
            f"CapAmb {capability_names(int(status['CapAmb'], 16))}, "
            f"CapBnd {capability_names(int(status['CapBnd'], 16))}"
        )
        if set(uids) != {self.uid}:
            raise Failed(f"not all uids are {PACKAGE}'s ({self.uid}): {facts}")
        if cap_eff != CAP_NET_ADMIN:
            raise Failed(facts)
        return facts

    def no_warnings(self) -> str:
        # Give the first start's DNS and feed attempts (which fail: no network)
        # time to log whatever they log.
        assert self.enabled_at is not None
        time.sleep(max(0.0, self.enabled_at + 8 - time.monotonic()))
        out = self.c.run(
            "journalctl",
            "--unit",
            UNIT,
            "--priority=warning",
            "--no-pager",
            "--quiet",
            "--output=cat",
        ).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        expected = [line for line in lines if any(p.search(line) for p in EXPECTED_WITHOUT_NETWORK)]
        unexpected = [line for line in lines if line not in expected]
        for line in expected:
            self.report.info(f"expected without network: {line}")
        if unexpected:
            raise Failed(f"{len(unexpected)} unexpected lines: {' | '.join(unexpected[:4])}")
        return f"no lines besides {len(expected)} expected without network"

    def reload_good(self) -> str:
        pid = self.main_pid()
        result = self.reload()
        if result.returncode != 0:
            raise Failed(f"reload exited {result.returncode}: {first_lines(result.stderr)}")
        self.require_active()
        if self.main_pid() != pid:
            raise Failed(f"MainPID changed {pid} -> {self.main_pid()}: restarted, not reloaded")
        return f"active, MainPID {pid}"

    def reload_broken(self) -> str:
        pid, rules = self.main_pid(), self.ruleset()
        self.write_config(self.edited_config + "\n[bogus\n")
        try:
            result = self.reload()
            if result.returncode == 0:
                raise Failed("`systemctl reload` succeeded with `[bogus` in the config")
            self.require_active()
            if self.main_pid() != pid:
                raise Failed(f"MainPID changed {pid} -> {self.main_pid()}")
            if self.ruleset() != rules:
                raise Failed("table inet repogate changed after the refused reload")
            refused = first_lines(result.stderr, 1)
        finally:
            self.write_config(self.edited_config)
        restored = self.reload()
        if restored.returncode != 0:
            raise Failed(f"reload after restoring the config exited {restored.returncode}")
        return (
            f"reload exited {result.returncode} ({refused}); "
            f"still active, MainPID {pid}, same rules"
        )

    def stop_while_hanging(self) -> str:
        host, port = HANG_ADDRESS
        self.c.must(
            "systemd-run",
            "--quiet",
            "--collect",
            "--unit=repogate-proof-hang",
            "python3",
            "-c",
            HANG_SERVER,
            host,
            str(port),
        )
        try:
            return self._stop_with_hanging_source(host, port)
        finally:
            self.c.run("systemctl", "stop", "repogate-proof-hang.service")
            self.write_config(self.edited_config)
            # Back to the state before this check, for the upgrade.
            self.c.run("systemctl", "start", UNIT, timeout=120)

    def _stop_with_hanging_source(self, host: str, port: int) -> str:
        def listening() -> bool:
            out = self.c.run("ss", "-H", "-l", "-t", "-n", "sport", "=", f":{port}").stdout
            return bool(out.strip())

        holder = ""

        def fetch_in_flight() -> bool:
            # The client end of a connection to the server: the daemon's fetch.
            nonlocal holder
            out = self.c.run(
                "ss", "-H", "-t", "-n", "-p", "state", "established", "dport", "=", f":{port}"
            ).stdout
            users = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out)
            holder = f"{users.group(1)} pid {users.group(2)}" if users else out.strip()
            return bool(out.strip())

        self.wait_until(f"the hanging server on {host}:{port}", listening, 15)
        # A long timeout so that only a prompt stop, not the fetch timing out,
        # can end the stop quickly.
        self.write_config(
            self.edited_config
            + "\n# added by packaging/proof/run: a list server that never answers\n"
            + "[[clients]]\n"
            + 'name = "proof-hanging"\n'
            + 'type = "http"\n'
            + f'url = "https://{host}:{port}/list.txt"\n'
            + 'timeout = "60s"\n'
        )
        result = self.reload()
        if result.returncode != 0:
            raise Failed(
                f"reload with the http group exited {result.returncode}: "
                f"{first_lines(result.stderr)}"
            )
        self.wait_until("the daemon connecting to the hanging server", fetch_in_flight, 20)
        time.sleep(1)  # well into the TLS handshake that never completes
        began = time.monotonic()
        stopped = self.c.run("systemctl", "stop", UNIT, timeout=200)
        took = time.monotonic() - began
        result_prop = self.systemctl_show("Result")
        facts = (
            f"fetch by {holder} hung in the TLS handshake; stop took {took:.1f}s, "
            f"exit {stopped.returncode}, Result={result_prop}"
        )
        if stopped.returncode != 0 or took > STOP_LIMIT:
            raise Failed(f"{facts}; {self.recent_journal(4)}")
        return facts
