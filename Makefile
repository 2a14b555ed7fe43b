# repogate developer entry points. `make test` installs what it needs on a
# fresh Debian 12 machine (apt packages, a venv) and runs the whole suite.

PYTHON_SYSTEM := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := nftables python3-nftables python3-venv iproute2 procps
STAMP_APT := $(VENV)/.apt-stamp
STAMP_PIP := $(VENV)/.pip-stamp

.PHONY: all deps venv test lint typecheck unit demo bench deb clean

all: test

$(STAMP_APT):
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	else echo "not root: skipping apt packages ($(APT_PACKAGES))"; fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps: $(STAMP_PIP)
venv: deps

lint: deps
	$(VENV)/bin/ruff check agent tests lab bench
	$(VENV)/bin/ruff format --check agent tests lab bench

typecheck: deps
	$(VENV)/bin/mypy

unit: deps
	$(PY) -m pytest -q tests/unit

test: lint typecheck
	$(PY) -m pytest -q tests

demo: deps
	$(PY) -m lab.demo

bench: deps
	$(PY) bench/run.py

deb:
	packaging/build-deb dist

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info agent/*.egg-info
