"""Prove a built repogate .deb on a booted Debian 12 (bookworm), systemd as PID 1.

    packaging/proof/run [--keep] [dist/repogate_<version>_all.deb]

Run as root. Without an argument the newest dist/repogate_*_all.deb is proved.

What it does, and why this way:

* A minbase bookworm root from debootstrap is cached (REPOGATE_PROOF_CACHE,
  default /var/cache/repogate-proof/bookworm-base) and copied per run, so every
  run starts from the same clean system without paying for debootstrap.
* The container's network namespace holds only loopback (no route to anything),
  which is also how the package must cope with a gate host that has no network
  yet. So apt resolves the package's dependencies against Debian's archive in a
  chroot with the host's network, with --download-only (the .debs are cached
  beside the base), and the real `apt-get install ./repogate_*.deb` then runs
  inside the booted container, where maintainer scripts see a running systemd.
* The container is booted with systemd-nspawn in a mount namespace of its own
  (a tmpfs on /run/systemd/nspawn) because PID 1 on a build host need not be
  systemd: --register=no and --keep-unit keep nspawn from asking for machined
  or a scope unit. Commands run inside with `nsenter -a` into its PID 1.

Each check prints one line, `ok` or `FAIL`, with what it proved; `info` lines
are facts for the packager (what apt pulled in, what purge leaves) and `time`
lines are timings. Exit status 0 only if every check passed.

Only the Python standard library is used; no command goes through a shell
string with data in it (the one `sh -c`, in container.py, is a constant, its
data are positional arguments).

The modules, in the order a run uses them:

    main              arguments, signals, the run from base to shutdown
    host              commands on the build host, the tools it needs, a lock
    base              the cached debootstrap base and the per-run root
    container         the network namespace, the run directory, nspawn
    report            the ok/FAIL/info/time lines and the verdict
    steps             the checks in order, and what a failure blocks
    session           what the checks share: the container, state, helpers
    checks_install    install, unit state, user, config, enable
    checks_service    the running service: status, metrics, table, identity,
                      journal, reload, stop while a source hangs
    checks_upgrade    upgrade watched by `nft monitor`, purge
    package           the names of the package under proof
    capabilities      capability(7) numbers and /proc/<pid>/status
"""
