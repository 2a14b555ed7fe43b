"""Git smart HTTP over TLS as Bitbucket Cloud answers it: real nginx, fcgiwrap, git http-backend.

    with start_git_https(server_ns, workdir, ("198.51.100.10", 443), token=token,
                         allowed_sources=["10.77.0.2"], server_names=["bitbucket.org"]) as git:
        run(["git", "ls-remote", git.url("team/repo.git", token=token)],
            env={"GIT_SSL_CAINFO": str(git.ca_file), ...})
        assert ("10.77.0.2", 200, "/team/repo.git/info/refs?service=git-upload-pack") in git.seen()

Checks run in Bitbucket's order, so a probe can tell what refused it: first the workspace's
IP allowlist (nginx `geo` on the address the server saw: 403 and a plain-text body naming
that address), then HTTP basic auth as `x-token-auth` with the token as password (401,
`WWW-Authenticate: Basic realm="Bitbucket.org HTTP"`), and only then git itself. The access
log holds `$remote_addr $status $request_uri`, which `seen()` returns, so a test asserts
the source address after SNAT rather than assuming it.

nginx runs in the foreground (`daemon off`) with every path (pid, temp dirs, logs) in the
server's directory and its workers as root (pytest's directories are private to root).
`set_allowed_sources` rewrites the geo include and reloads nginx (SIGHUP), returning once
no worker of the old configuration remains; `set_token` only rewrites the password file,
which nginx reads on every request. The certificate comes from a throwaway `LabCA`, so
clients trust `ca_file` as they would a real chain.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from lab.daemons import Daemon, descendants, host_port, spawn, wait_accepting, wait_until
from lab.errors import LabError
from lab.https import LabCA
from lab.netns import in_netns, run

NGINX = "nginx"  # Debian package nginx
FCGIWRAP = "fcgiwrap"  # Debian package fcgiwrap
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"  # Debian package git
GIT = "git"
TOKEN_USER = "x-token-auth"
REALM = "Bitbucket.org HTTP"
DEFAULT_REPO = "team/repo.git"
RELOAD_TIMEOUT = 10.0
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9.:-]+$")  # nothing nginx.conf could misread
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL
# Bitbucket Cloud's refusal when a workspace's IP allowlist does not hold the client.
REFUSAL = "Your IP address ($remote_addr) is not on this workspace's IP allowlist."
# git never reads the user's or the system's configuration here: only what we pass.
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "PATH": os.defpath}


@dataclass
class GitHttpsProcess:
    """nginx and fcgiwrap serving bare repositories; `stop()` or a `with` block ends both."""

    netns: str
    directory: Path
    listen: tuple[str, int]
    ca_file: Path
    nginx: Daemon | None = field(default=None, repr=False)
    fcgiwrap: Daemon | None = field(default=None, repr=False)

    @property
    def repos(self) -> Path:
        return self.directory / "repos"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def url(self, repo: str = DEFAULT_REPO, *, token: str | None = None) -> str:
        """`https://ADDRESS:PORT/team/repo.git`, with `x-token-auth:TOKEN@` given a token."""
        userinfo = "" if token is None else f"{TOKEN_USER}:{quote(token, safe='')}@"
        return f"https://{userinfo}{host_port(*self.listen)}/{repo}"

    def seen(self) -> list[tuple[str, int, str]]:
        """Every request logged so far as (remote address, status, request URI), oldest first.

        nginx logs a request just after answering it, so a client may hold its answer a
        moment before the line is written: wait for a line with `wait_seen`. With its one
        worker, nginx logs requests in the order it answered them.
        """
        if not self.access_log.exists():
            return []
        entries = []
        for line in self.access_log.read_text().splitlines():
            address, status, uri = line.split(" ", 2)
            entries.append((address, int(status), uri))
        return entries

    def wait_seen(
        self, predicate: Callable[[list[tuple[str, int, str]]], bool], timeout: float = 5.0
    ) -> list[tuple[str, int, str]]:
        """`seen()` as soon as predicate accepts it."""
        deadline = time.monotonic() + timeout
        while not predicate(entries := self.seen()):
            if time.monotonic() > deadline:
                raise LabError(f"nginx never logged what was expected; it logged {entries}")
            time.sleep(0.02)
        return entries

    def add_repo(self, name: str) -> Path:
        """Create bare repository `name` (e.g. `team/other.git`) holding one commit on main."""
        bare = self.repos / name
        if not name.endswith(".git") or ".." in Path(name).parts or bare.exists():
            raise LabError(f"bad or existing repository name {name!r}")
        work = self.directory / f"work-{secrets.token_hex(4)}"
        env = {**GIT_ENV, "HOME": str(self.directory)}
        ident = ["-c", "user.name=repogate lab", "-c", "user.email=lab@repogate.invalid"]
        init = [GIT, "-c", "init.defaultBranch=main", "init", "-q"]
        run([*init, str(work)], env=env)
        (work / "README").write_text(f"{name}: a repository of the repogate lab\n")
        run([GIT, "-C", str(work), "add", "README"], env=env)
        run([GIT, "-C", str(work), *ident, "commit", "-q", "-m", "First commit"], env=env)
        run([*init, "--bare", str(bare)], env=env)
        run([GIT, "-C", str(work), "push", "-q", str(bare), "main:main"], env=env)
        shutil.rmtree(work)
        return bare

    def set_token(self, token: str) -> None:
        """Accept only `token` from now on (nginx reads the file on every request)."""
        _write_atomic(self.directory / "htpasswd", _htpasswd_line(token))

    def set_allowed_sources(self, sources: Sequence[str]) -> None:
        """Allow only these addresses or networks, and wait until nginx applies that."""
        _write_atomic(self.directory / "allowed.conf", _geo_lines(sources))
        if self.nginx is not None:
            self._reload()

    def _reload(self) -> None:
        """SIGHUP, then wait until every worker of the old configuration has gone.

        The configuration is checked first (`nginx -t`), because a master that cannot load
        a new one logs that and carries on with the old: the test would pass or fail on the
        wrong allowlist without a word.
        """
        assert self.nginx is not None
        run(in_netns(self.netns, [*self._nginx_argv(), "-t", "-q"]))
        old = set(descendants(self.nginx.proc.pid))
        os.kill(self.nginx.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            workers = set(descendants(self.nginx.proc.pid))
            if workers and not workers & old:
                return
            if not self.nginx.alive():
                raise self.nginx.failure("exited while reloading")
            if time.monotonic() > deadline:
                raise self.nginx.failure(f"kept old workers {sorted(workers & old)}")
            time.sleep(0.02)

    def _nginx_argv(self) -> list[str]:
        error_log = str(self.directory / "nginx-error.log")
        conf = str(self.directory / "nginx.conf")
        return [NGINX, "-p", str(self.directory), "-e", error_log, "-c", conf]

    def _start(self) -> None:
        socket_path = self.directory / "fcgiwrap.sock"
        socket_path.unlink(missing_ok=True)
        self.fcgiwrap = spawn(
            self.netns,
            "fcgiwrap",
            # -f: git's stderr to nginx's error log; -p: it may run git http-backend only;
            # -c 1: no preforked children, which would outlive it as zombies when it stops
            # (requests queue: git answers quickly, and nginx buffers both ways).
            [FCGIWRAP, "-f", "-c", "1", "-s", f"unix:{socket_path}", "-p", HTTP_BACKEND],
            self.directory / "fcgiwrap.log",
        )
        wait_until(self.fcgiwrap, socket_path)
        self.nginx = spawn(self.netns, "nginx", self._nginx_argv(), self.directory / "nginx.log")
        wait_accepting(self.netns, self.nginx, [self.listen])

    def stop(self) -> None:
        """Stop nginx, then fcgiwrap (and any git still running below it)."""
        for daemon in (self.nginx, self.fcgiwrap):
            if daemon is not None:
                daemon.stop()

    def __enter__(self) -> GitHttpsProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_git_https(
    netns: str,
    directory: Path,
    listen: tuple[str, int],
    *,
    token: str,
    allowed_sources: Sequence[str],
    server_names: Sequence[str],
) -> GitHttpsProcess:
    """Serve `team/repo.git` over HTTPS on listen in netns; return once it accepts TCP.

    The certificate names server_names and the listen address (so `url()` verifies too).
    """
    directory = directory.resolve()
    if len(str(directory / "fcgiwrap.sock")) > SUN_PATH_MAX:
        raise LabError(f"directory {directory} is too long for a unix socket path inside it")
    if any(char in str(directory) for char in " \t\n;{}'\"$\\"):
        raise LabError(f"directory {directory} holds characters nginx.conf would misread")
    directory.mkdir(parents=True, exist_ok=True)
    ca = LabCA(directory, "repogate git CA")
    names = tuple(dict.fromkeys([*server_names, listen[0]]))
    if bad := [name for name in names if not SERVER_NAME_RE.match(name)]:
        raise LabError(f"bad server names {bad}: host names and addresses only")
    cert, key = write_server_cert(ca, names, directory)
    server = GitHttpsProcess(netns, directory, listen, ca.ca_file)
    server.set_token(token)
    server.set_allowed_sources(allowed_sources)
    for temp in ("body", "fastcgi", "proxy", "scgi", "uwsgi"):
        (directory / "temp" / temp).mkdir(parents=True, exist_ok=True)
    (directory / "nginx.conf").write_text(_nginx_conf(server, names, cert, key))
    server.add_repo(DEFAULT_REPO)
    try:
        server._start()
    except BaseException:
        server.stop()
        raise
    return server


def write_server_cert(ca: LabCA, names: Sequence[str], directory: Path) -> tuple[Path, Path]:
    """Issue a certificate for names and write (chain, key) as PEM files for a real server."""
    issued = ca.ca.issue_cert(*names)
    cert, key = directory / "server-chain.pem", directory / "server-key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return cert, key


def _htpasswd_line(token: str) -> str:
    """`x-token-auth:{SSHA}...`: salted SHA-1 (RFC 2307), which nginx checks without crypt()."""
    if not token or any(char in token for char in "\r\n"):
        raise LabError("the token must be one non-empty line")
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(token.encode() + salt).digest()
    return f"{TOKEN_USER}:{{SSHA}}{base64.b64encode(digest + salt).decode()}\n"


def _geo_lines(sources: Sequence[str]) -> str:
    """One `NETWORK 1;` line per source, parsed first so nothing else reaches nginx.conf."""
    try:
        networks = [ipaddress.ip_network(source, strict=False) for source in sources]
    except ValueError as exc:
        raise LabError(f"bad allowed source: {exc}") from exc
    return "".join(f"{network} 1;\n" for network in networks)


def _write_atomic(path: Path, text: str) -> None:
    """Replace path in one rename, so nginx never reads half a file."""
    partial = path.with_name(f".{path.name}.new")
    partial.write_text(text)
    partial.replace(path)


def _nginx_conf(server: GitHttpsProcess, names: Sequence[str], cert: Path, key: Path) -> str:
    d = server.directory
    listen = host_port(*server.listen)
    return f"""\
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    log_format lab '$remote_addr $status $request_uri';
    access_log {d}/access.log lab;
    client_body_temp_path {d}/temp/body;
    fastcgi_temp_path {d}/temp/fastcgi;
    proxy_temp_path {d}/temp/proxy;
    scgi_temp_path {d}/temp/scgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    default_type text/plain;
    server_tokens off;
    geo $rg_allowed {{
        default 0;
        include {d}/allowed.conf;
    }}
    server {{
        listen {listen} ssl;
        server_name {" ".join(names)};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        # The server-rewrite phase runs before auth_basic (access phase): allowlist first.
        if ($rg_allowed = 0) {{
            return 403 "{REFUSAL}\\n";
        }}
        location / {{
            auth_basic "{REALM}";
            auth_basic_user_file {d}/htpasswd;
            fastcgi_pass unix:{d}/fcgiwrap.sock;
            fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};
            fastcgi_param GIT_PROJECT_ROOT {server.repos};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_CONFIG_NOSYSTEM 1;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param HOME {d};
        }}
    }}
}}
"""
