"""The lab: a throwaway gateway, clients and servers in network namespaces, and repogate in gw.

    with Lab.create() as lab:
        lab.repogate("sync", check=True)
        for result in lab.matrix():
            print(result.client, result.target.label, result.result)

Everything is named `rg<6 hex>-<role>` so parallel or crashed runs never collide, and
`destroy()` (run by `__exit__`, and by `create()` itself if building fails half way) stops the
servers and deletes every namespace carrying this run's tag. Nothing has an uplink: the only
interfaces are veths between this run's own namespaces.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from lab import loop, netns
from lab.config import BaseConfig, derive, load_shipped, merge, table_name
from lab.errors import LabError
from lab.probe import DEFAULT_TIMEOUT, ProbeResult, RunningProbe, start_probe
from lab.server import Listener, ServerProcess, start_server
from lab.spec import DEFAULT_SPEC, GATEWAY, Client, LabSpec, Target, reachable_versions
from lab.tomlw import dumps

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

# A target given as ("bitbucket", 22) or ("198.51.100.10", 22).
TargetRef = Target | tuple[str, int]

_CLEANUP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass
class Lab:
    """One running lab. Build it with `Lab.create()` and use it as a context manager."""

    spec: LabSpec
    tag: str
    workdir: Path
    base: BaseConfig
    python: str = sys.executable
    repo_root: Path = REPO_ROOT
    config: dict[str, Any] = field(default_factory=dict)
    servers: list[ServerProcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    destroyed: bool = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        config_overrides: Mapping[str, Any] | None = None,
        *,
        spec: LabSpec = DEFAULT_SPEC,
        base: BaseConfig | None = None,
        python: str = sys.executable,
    ) -> Lab:
        """Build the topology, start the servers and write the config; clean up on failure."""
        tag = netns.new_tag()
        workdir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
        lab = cls(spec=spec, tag=tag, workdir=workdir, base=base or load_shipped(), python=python)
        try:
            started = time.monotonic()
            lab._build_namespaces()
            lab._start_servers()
            lab.write_config(config_overrides)
            lab.timings["create"] = time.monotonic() - started
        except BaseException:
            lab.destroy(raise_errors=False)
            raise
        return lab

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # With an exception already on its way, a cleanup problem is logged, not raised, so
        # it does not hide the original failure.
        self.destroy(raise_errors=exc_type is None)

    def destroy(self, *, raise_errors: bool = True) -> None:
        """Stop the servers, delete this run's namespaces and temp dir. Safe to call twice.

        Ctrl-C and SIGTERM are held back meanwhile (and delivered afterwards) so that an
        impatient second Ctrl-C cannot leave namespaces behind; the `ip` commands run here
        inherit the blocked mask, so the terminal's SIGINT does not kill them either.
        """
        if self.destroyed:
            return
        started = time.monotonic()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _CLEANUP_SIGNALS)
        errors: list[str] = []
        try:
            for server in self.servers:
                try:
                    server.stop()
                except (OSError, subprocess.SubprocessError) as exc:
                    errors.append(f"stopping server in {server.netns}: {exc}")
            self.servers.clear()
            try:
                for name in self._own_netns():
                    try:
                        netns.delete_netns(name)
                    except LabError as exc:
                        errors.append(str(exc))
                leftover = self._own_netns()
            except LabError as exc:
                errors.append(str(exc))
                leftover = []
            if leftover:
                errors.append(f"namespaces left behind: {', '.join(leftover)}")
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.destroyed = True
            self.timings["destroy"] = time.monotonic() - started
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if errors:
            message = "lab cleanup failed: " + "; ".join(errors)
            if raise_errors:
                raise LabError(message)
            log.error("%s", message)

    # -- naming ----------------------------------------------------------------------------

    def ns(self, role: str) -> str:
        """The namespace name of a role (`gw`, `alice`, ...)."""
        if role not in self.spec.roles():
            raise KeyError(f"unknown role {role!r}; roles: {', '.join(self.spec.roles())}")
        return f"{self.tag}-{role}"

    @property
    def gw(self) -> str:
        """The gateway namespace name."""
        return self.ns(GATEWAY)

    @property
    def config_path(self) -> Path:
        """Where the current repogate config is written."""
        return self.workdir / "repogate.toml"

    @property
    def state_dir(self) -> Path:
        """repogate's state_dir for this run."""
        return self.workdir / "state"

    @property
    def table(self) -> str:
        """The nftables table repogate manages under the current config."""
        return table_name(self.config)

    def _ifnames(self, short: str) -> tuple[str, str]:
        return f"{self.tag}g{short}", f"{self.tag}n{short}"

    def _own_netns(self) -> list[str]:
        return [n for n in netns.list_netns() if n.startswith(f"{self.tag}-")]

    # -- building --------------------------------------------------------------------------

    def _build_namespaces(self) -> None:
        # DAD off before any veth exists, so link-local addresses are not tentative either.
        no_dad = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}
        forwarding = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
        for role in self.spec.roles():
            netns.add_netns(self.ns(role))
            settings = {**no_dad, **forwarding} if role == GATEWAY else no_dad
            netns.sysctl(self.ns(role), settings)
        for link in self.spec.links:
            gw_if, peer_if = self._ifnames(link.short)
            peer = self.ns(link.role)
            netns.add_veth(self.gw, gw_if, peer, peer_if)
            for gw_addr, prefix in ((link.gw_v4, link.v4_prefix), (link.gw_v6, link.v6_prefix)):
                if gw_addr is not None:
                    netns.add_address(self.gw, gw_if, f"{gw_addr}/{prefix}")
            for addr in link.v4:
                netns.add_address(peer, peer_if, f"{addr}/{link.v4_prefix}")
            for addr in link.v6:
                netns.add_address(peer, peer_if, f"{addr}/{link.v6_prefix}")
            netns.link_up(self.gw, gw_if)
            netns.link_up(peer, peer_if)
            for via in (link.gw_v4, link.gw_v6):
                if via is not None:
                    netns.add_default_route(peer, via)

    def _start_servers(self) -> None:
        for role in self.spec.server_roles():
            listeners = [
                Listener(t.name, t.address, t.port)
                for service in self.spec.services_in(role)
                for t in service.targets()
            ]
            self.servers.append(
                start_server(
                    self.python_argv(role),
                    self.ns(role),
                    listeners,
                    log_path=self.workdir / f"server-{role}.log",
                    env=self.env(),
                )
            )

    # -- running things --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment for lab processes: the in-repo `agent/` and `lab` importable first."""
        env = dict(os.environ)
        paths = [str(self.repo_root / "agent"), str(self.repo_root)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def python_argv(self, role: str) -> list[str]:
        """argv prefix that runs this lab's Python inside a role's namespace."""
        return netns.in_netns(self.ns(role), [self.python])

    def exec(
        self, role: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside a role's namespace."""
        return netns.run(netns.in_netns(self.ns(role), argv), check=check, timeout=timeout)

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `nft ARGS...` in the gateway."""
        return self.exec(GATEWAY, ["nft", *args], check=check)

    def repogate(
        self, verb: str, *args: str, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `repogate VERB ARGS... --config <lab config>` in the gateway.

        Uses `python -m repogate` with `agent/` on PYTHONPATH, so it runs the working tree
        whether or not the package is installed. check=False by default because tests assert
        on exit codes; with check=True a non-zero exit raises LabError carrying stderr.
        """
        return netns.run(
            self.repogate_argv(verb, *args), check=check, timeout=timeout, env=self.env()
        )

    def repogate_argv(self, verb: str, *args: str) -> list[str]:
        """argv of `repogate VERB ARGS... --config <lab config>` in the gateway.

        For callers that need their own process (the daemon, `repogate run`) rather than a
        finished one; run it with `env()`, which puts the working tree's `agent/` first.
        """
        argv = [*self.python_argv(GATEWAY), "-m", "repogate", verb, *args]
        return [*argv, "--config", str(self.config_path)]

    def write_config(self, overrides: Mapping[str, Any] | None = None) -> Path:
        """(Re)write the lab config: the derived base with `overrides` merged in."""
        self.state_dir.mkdir(exist_ok=True)
        derived = derive(self.base.data, self.spec, self.state_dir)
        self.config = merge(derived, overrides)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(dumps(self.config))
        tmp.replace(self.config_path)
        return self.config_path

    # -- probing ---------------------------------------------------------------------------

    def resolve_targets(
        self, refs: Iterable[TargetRef], versions: set[int] | None = None
    ) -> list[Target]:
        """Expand ("bitbucket", 22) into every matching target, ("198.51.100.10", 22) into one.

        Names expand only to the IP versions in `versions` (a v4-only client has no v6 route).
        An address the lab does not serve becomes a Target named `?`, so it can be probed for
        `refused` or `timeout` but never counts as `connected` (no banner can match).
        """
        resolved: list[Target] = []
        for ref in refs:
            if isinstance(ref, Target):
                resolved.append(ref)
                continue
            host, port = ref
            if _is_address(host):
                known = [t for t in self.spec.targets() if (t.address, t.port) == (host, port)]
                resolved.append(known[0] if known else Target("?", "?", host, port, False))
                continue
            matches = [
                t
                for t in self.spec.targets_named(host)
                if t.port == port and (versions is None or t.version in versions)
            ]
            if not matches:
                wanted = "/".join(f"IPv{v}" for v in sorted(versions or {4, 6}))
                raise KeyError(f"{host} has no {wanted} listener on port {port}")
            resolved += matches
        return resolved

    def start_probe(
        self,
        client: str,
        targets: Iterable[TargetRef] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        source: str | None = None,
    ) -> RunningProbe:
        """Start one probe subprocess in a client namespace (collect() gives the results)."""
        spec_client = self.spec.client(client)
        if source is not None:
            versions, sources = {_version(source)}, {_version(source): source}
        else:
            versions = reachable_versions(spec_client)
            sources = {_version(a): a for a in spec_client.addresses()}
        chosen = self.resolve_targets(
            targets if targets is not None else self.spec.targets(), versions
        )
        if targets is None:
            chosen = [t for t in chosen if t.version in versions]
        return start_probe(
            self.python_argv(client),
            client,
            sources,
            chosen,
            env=self.env(),
            timeout=timeout,
            source=source,
        )

    def probe(
        self,
        client: str,
        targets: Iterable[TargetRef] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        source: str | None = None,
    ) -> list[ProbeResult]:
        """Connect from `client` to each target (default: all it has a route to) at once."""
        return self.start_probe(client, targets, timeout=timeout, source=source).collect()

    def start_loop(
        self,
        client: str,
        targets: Iterable[TargetRef],
        *,
        source: str | None = None,
        interval: float = loop.DEFAULT_INTERVAL,
        timeout: float = loop.DEFAULT_TIMEOUT,
        deadline: float = loop.DEFAULT_DEADLINE,
    ) -> loop.RunningLoop:
        """Start a background connection loop in a client namespace (see `lab.loop`).

        Targets expand like `probe`'s, to the IP versions the client (or `source`) can use.
        The caller stops it with `stop()`; `destroy()` kills it with the namespace anyway.
        """
        spec_client = self.spec.client(client)
        versions = {_version(source)} if source is not None else reachable_versions(spec_client)
        return loop.start_loop(
            self.python_argv(client),
            client,
            self.resolve_targets(targets, versions),
            workdir=self.workdir / "loops",
            env=self.env(),
            interval=interval,
            timeout=timeout,
            deadline=deadline,
            source=source,
        )

    def matrix(
        self,
        clients: Iterable[str | Client] | None = None,
        targets: Iterable[TargetRef] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[ProbeResult]:
        """Probe every client x target, all clients in parallel (about one timeout in total).

        A client is a role (probed from its own addresses) or a spec Client such as one of
        `spec.extra_sources` (probed from that address). Default: every `spec.clients` role.
        """
        chosen = list(clients) if clients is not None else list(self.spec.clients)
        wanted = list(targets) if targets is not None else None
        running: list[RunningProbe] = []
        try:
            for client in chosen:
                if isinstance(client, str) or client in self.spec.clients:
                    role = client if isinstance(client, str) else client.role
                    running.append(self.start_probe(role, wanted, timeout=timeout))
                else:
                    source = client.addresses()[0]
                    running.append(
                        self.start_probe(client.role, wanted, timeout=timeout, source=source)
                    )
            return [result for probe in running for result in probe.collect()]
        finally:
            for probe in running:
                if probe.proc.poll() is None:
                    probe.proc.kill()
                    probe.proc.communicate()

    # -- display ---------------------------------------------------------------------------

    def describe(self) -> str:
        """A few lines showing namespaces, links, addresses and listeners."""
        lines = [f"lab {self.tag}: gateway {self.gw} (forwarding on, no uplink)"]
        rows = []
        for link in self.spec.links:
            gw_if, peer_if = self._ifnames(link.short)
            gw_side = ", ".join(a for a in (link.gw_v4, link.gw_v6) if a)
            peer_side = ", ".join((*link.v4, *link.v6))
            rows.append((self.ns(link.role), peer_if, peer_side, f"<-> {gw_if} {gw_side}"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            lines.append("  " + "  ".join([*cells, row[3]]))
        for service in self.spec.services:
            ports = ",".join(str(p) for p in service.ports)
            host = f"[{service.address}]" if ":" in service.address else service.address
            kind = "protected" if service.protected else "not protected"
            lines.append(f"  {service.name:<10} listens on {host}:{ports} ({kind})")
        lines.append(f"  config {self.config_path} (from {self.base.source})")
        return "\n".join(lines)


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
