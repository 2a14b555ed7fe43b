"""The cached debootstrap base, and the per-run root copied from it.

Building the base is slow (debootstrap, a full upgrade), so it is built once
and reused while its recipe is unchanged; each run copies it and lets apt
download the package's dependencies there, with the host's network, because
the booted container has none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .host import APT_ENV, HOST_PATH, locked, run_host
from .package import STAGE
from .report import Report

SUITE = "bookworm"
# The Debian archive is the one network this kind of build host reaches; both
# are overridable for a local mirror.
MIRROR = os.environ.get("REPOGATE_PROOF_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get(
    "REPOGATE_PROOF_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
)
CACHE = Path(os.environ.get("REPOGATE_PROOF_CACHE", "/var/cache/repogate-proof/bookworm-base"))
# systemd and dbus to boot; iproute2 (ss), nftables and procps (pgrep) for the
# checks; libcap2-bin (capsh, getpcaps) for looking by hand into a --keep root
# booted again. python3 is deliberately left out: it must come with the
# package's own dependencies.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "nftables", "procps", "libcap2-bin")
# Bumped when the way the base is built changes, so old caches are rebuilt.
BASE_FORMAT = 1


def chroot_run(root: Path, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """apt in the root with the host's network (the container has none)."""
    env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", **APT_ENV}
    return run_host(["chroot", root, *argv], env=env, timeout=timeout)


def base_recipe() -> dict[str, object]:
    return {
        "format": BASE_FORMAT,
        "suite": SUITE,
        "mirror": MIRROR,
        "security": SECURITY_MIRROR,
        "packages": list(BASE_PACKAGES),
    }


def stamp_path(base: Path) -> Path:
    return base.with_name(base.name + ".stamp")


def lock_path(base: Path) -> Path:
    return base.with_name(base.name + ".lock")


def archives_path(base: Path) -> Path:
    """Dependency .debs downloaded by earlier runs, so a warm run downloads nothing."""
    return base.with_name(base.name + ".archives")


def base_is_current(base: Path) -> bool:
    try:
        return base.is_dir() and json.loads(stamp_path(base).read_text()) == base_recipe()
    except (OSError, ValueError):
        return False


def build_base(base: Path) -> None:
    """debootstrap a minbase bookworm with updates and security, fully upgraded."""
    fresh = base.with_name(base.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    run_host(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            fresh,
            MIRROR,
        ],
        timeout=1800,
    )
    # A bookworm system as deployed: point release updates and security too.
    (fresh / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb {SECURITY_MIRROR} {SUITE}-security main\n"
    )
    # nspawn would otherwise show the build host's name, copied by debootstrap.
    (fresh / "etc/hostname").write_text("repogate-proof\n")
    chroot_run(fresh, "apt-get", "update", "-q")
    chroot_run(fresh, "apt-get", "-y", "-q", "upgrade")
    chroot_run(fresh, "apt-get", "clean")
    shutil.rmtree(base, ignore_errors=True)
    fresh.rename(base)
    stamp_path(base).write_text(json.dumps(base_recipe()))


def ensure_base(report: Report) -> Path:
    with locked(lock_path(CACHE)):
        if base_is_current(CACHE):
            report.info(f"root filesystem cache: {CACHE} (reused)")
            return CACHE
        began = time.monotonic()
        build_base(CACHE)
        report.timing(f"debootstrap {SUITE} into {CACHE} (cold cache)", time.monotonic() - began)
    return CACHE


def copy_debs(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for deb in source.glob("*.deb"):
        if not (target / deb.name).exists():
            shutil.copy2(deb, target / deb.name)


def prepare_root(base: Path, root: Path, deb: Path) -> int:
    """A per-run copy of the base with the package's dependencies downloaded.

    Returns how many .debs had to be downloaded (0 on a warm cache).
    """
    run_host(["cp", "-a", "--reflink=auto", base, root])
    archives = root / "var/cache/apt/archives"
    cached = archives_path(base)
    copy_debs(cached, archives)
    stage = root / STAGE.lstrip("/")
    stage.mkdir(mode=0o755, parents=True)
    shutil.copy2(deb, stage / deb.name)
    (stage / deb.name).chmod(0o644)
    before = {p.name for p in archives.glob("*.deb")}
    # Cheap when the lists are current (conditional requests), and it keeps
    # the dependency versions the ones Debian serves today.
    chroot_run(root, "apt-get", "update", "-q")
    chroot_run(root, "apt-get", "install", "-y", "-q", "--download-only", f"{STAGE}/{deb.name}")
    downloaded = {p.name for p in archives.glob("*.deb")} - before
    with locked(lock_path(base)):
        copy_debs(archives, cached)
    return len(downloaded)
