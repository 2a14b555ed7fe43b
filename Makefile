# repogate developer entry points. `make test` installs what it needs on a
# fresh Debian 12 machine (apt packages, a venv) and runs the whole suite.

PYTHON_SYSTEM := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# python3-apscheduler, python3-pyroute2 and python3-pytest: the suite also runs on
# Debian's packaged versions (test-debian), which the .deb depends on.
APT_PACKAGES := nftables python3-nftables python3-venv iproute2 procps util-linux \
	python3-apscheduler python3-pyroute2 python3-dnspython python3-prometheus-client \
	python3-pytest python3-trustme systemd \
	dnsmasq-base bind9 bind9-dnsutils prometheus \
	wireguard-go wireguard-tools openvpn busybox \
	openssh-server openssh-client git nginx fcgiwrap man-db \
	debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools dpkg-dev \
	fakeroot lintian
STAMP_APT := $(VENV)/.apt-stamp
STAMP_PIP := $(VENV)/.pip-stamp

.PHONY: all deps venv test test-debian lint typecheck unit demo bench deb test-package proof \
	soak bench-datapath bench-peers clean

all: test

$(STAMP_APT):
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    status=$$?; [ -n "$$guard" ] && rm -f /usr/sbin/policy-rc.d; [ $$status = 0 ] || exit $$status; \
	    case "$$missing" in *" bind9 "*|*" bind9") systemctl disable named >/dev/null 2>&1 || true;; esac; \
	  fi; \
	else echo "not root: skipping apt packages ($(APT_PACKAGES))"; fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# --upgrade: the venv sees Debian's packages; take PyPI's current releases over them.
	$(PY) -m pip install -q --upgrade -e '.[test]' 'apscheduler>=3.9,<4' 'pyroute2>=0.7' \
		'dnspython>=2.3' 'prometheus-client>=0.16' pytest trustme
	touch $@

deps: $(STAMP_PIP)
venv: deps

lint: deps
	$(VENV)/bin/ruff check agent tests lab bench packaging packaging/proof/run
	$(VENV)/bin/ruff format --check agent tests lab bench packaging packaging/proof/run

typecheck: deps
	$(VENV)/bin/mypy

unit: deps
	$(PY) -m pytest -q tests/unit

test: lint typecheck
	$(PY) -m pytest -q tests -m "not fault or fault_short"
	$(MAKE) --no-print-directory test-debian

# The unit tests and the daemon's end-to-end tests again, on Debian bookworm's
# packaged APScheduler, pyroute2 and pytest (/usr/bin/python3, no venv).
test-debian: deps
	@/usr/bin/python3 -c 'import importlib.metadata as m; print("debian packages:", *(f"{p} {m.version(p)}" for p in ("APScheduler", "pyroute2", "pytest")))'
	PYTHONPATH=agent:. /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/unit tests/e2e/test_daemon.py

demo: deps
	$(PY) -m lab.demo

# run.py also runs bench/daemon.py and bench/dns_resolution.py; about 9 minutes in all.
bench: deps
	$(PY) bench/run.py
	$(PY) bench/nft_layer.py

# The .deb, built by dpkg-buildpackage (debhelper 13, dh-python, pybuild) from a copy
# of this tree with packaging/debian as debian/; then lintian. Installs its own
# build dependencies when run as root.
DEB_BUILD_DEPS := debhelper dh-python pybuild-plugin-pyproject python3-all \
	python3-setuptools dpkg-dev fakeroot lintian
deb:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(DEB_BUILD_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  [ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	packaging/build-deb dist

# The fault suite: every fault in tests/e2e/test_faults*.py against the real daemon in the
# lab, with continuity loops counting wrong-state moments; prints docs/reliability.md's
# table. `make test` runs the ones marked fault_short.
proof: deps
	rm -f build/faults.jsonl
	$(PY) -m pytest -q tests/e2e -m fault
	$(PY) tests/e2e/faults.py build/faults.jsonl

# The package proven on a booted Debian 12 (systemd as PID 1 in systemd-nspawn): install
# disabled, enable, STATUS, metrics, the table, user and capabilities, reload good and
# bad, a prompt stop with a hanging source, an upgrade that changes nothing in the
# kernel, purge. Root; the debootstrapped base is cached in /var/cache/repogate-proof.
test-package: deb
	packaging/proof/run "dist/repogate_$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)_all.deb"

# 30 minutes of the daemon at 100,000 client addresses, 1,000 networks and 10,000 DDNS
# names (dnsmasq), 1 % of them churning each minute, metrics scraped every 15 s: RSS,
# descriptors, threads, reconcile p50/p99, CPU; fails on growth or a set that differs.
# SOAK_MINUTES=5 for a short run.
soak: deps
	$(PY) bench/soak.py $(if $(SOAK_MINUTES),--minutes $(SOAK_MINUTES))

# The data path with 100,000 addresses and 100,000 networks loaded: connections/s (wrk
# against nginx) and bulk throughput (iperf3) through a gateway namespace, with no table,
# the old flat rule layout and repogate's, interleaved; ratios with their spread and the
# share of CPU in nf_tables (perf). About 12 minutes.
DATAPATH_PACKAGES := wrk iperf3 ethtool linux-perf nginx
bench-datapath: deps
	@missing=""; for p in $(DATAPATH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  [ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing
	$(PY) bench/datapath.py --perf

# repogate beside its peers in one run: CrowdSec's firewall bouncer (Debian's, nftables
# mode, fed by a stand-in for its local API) and raw `nft -f` as the floor; azlux/nft-dns
# when NFT_DNS names a checkout of it (skipped, saying so, without). The bouncer's unit is
# masked before it is installed, so it never starts on the host. About 10 minutes.
bench-peers: deps
	@dpkg -s crowdsec-firewall-bouncer >/dev/null 2>&1 || { \
	  systemctl mask crowdsec-firewall-bouncer >/dev/null 2>&1 || true; \
	  guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends crowdsec-firewall-bouncer; \
	  status=$$?; [ -n "$$guard" ] && rm -f /usr/sbin/policy-rc.d; exit $$status; }
	$(PY) bench/peers.py $(if $(NFT_DNS),--nft-dns $(NFT_DNS))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info agent/*.egg-info
