# edge-redeem: `make test` and `make demo` set everything up themselves on Debian.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := libzbar0 python3-venv chromium systemd shellcheck poppler-utils fonts-wqy-microhei
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench deps venv clean postgres nginx soak mutate

deps:
	@if command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  fi; fi

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: deps $(STAMP)

# PostgreSQL for the central's tests: Debian's server package, without the "main" cluster
# it would start on port 5432 (documented in postgresql-common). The tests run their own
# throwaway cluster on 127.0.0.1 (tests/postgres.py), started below and removed after.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO mkdir -p /etc/postgresql-common; \
	  [ -e /etc/postgresql-common/createcluster.conf ] || \
	    echo "create_main_cluster = false" | $$SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    -o Dpkg::Options::=--force-confold postgresql; \
	fi

# nginx for the central's reference deployment (deploy/nginx/), which
# tests/test_central_deploy.py runs in front of two instances: Debian's package. The tests
# start their own nginx on 127.0.0.1 as a foreground process; the system service the
# package enables on port 80 is stopped and disabled again when this target installed it.
nginx:
	@if ! [ -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx; \
	  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    $$SUDO systemctl disable --now -q nginx.service || true; \
	  fi; \
	fi

test: venv postgres nginx
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m tests.postgres run -- $(VENV)/bin/pytest -n 2

# The full reliability suite (tests/reliability): 50 power-cut rounds, storage and clock
# faults, and over 1,000,000 fuzzed inputs. `make test` runs a short version of each.
soak: venv postgres
	REDEEM_SOAK=1 $(PY) -m tests.postgres run -- $(VENV)/bin/pytest tests/reliability -s -p no:cacheprovider

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

demo: venv
	$(PY) -m demo.run

# Every benchmark under bench/, one after another (they print figures; none is a test).
bench: venv postgres
	$(PY) bench/validate.py
	$(PY) bench/durable.py
	$(PY) bench/ledger.py
	$(PY) bench/ledger_scope.py
	$(PY) bench/token_size.py
	$(PY) bench/nfc_tag_size.py
	$(PY) bench/ledger_import_limits.py
	$(PY) bench/journal_start.py
	$(PY) bench/decode.py
	$(PY) bench/scan_latency.py
	$(PY) bench/daemon_cpu.py
	$(PY) -m tests.postgres run -- $(PY) bench/sync.py
	$(PY) -m tests.postgres run -- $(PY) bench/fleet.py
	$(PY) bench/issue.py
	$(PY) bench/issue.py --ingest
	$(PY) bench/pos_api.py
	$(PY) bench/peers.py
	$(PY) bench/systemd_security.py

# Mutation testing of the core's decision functions (mutmut, 2 workers; about 50 min here):
# prints killed X of Y and the survivors. Not part of `make test`. docs/reliability.md.
mutate: venv
	$(PY) -m tests.mutation_report

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
