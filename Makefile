# `make test` and `make demo` install what is missing (Debian packages, the venv),
# then run. Both are quick when everything is already there.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# `make chaos`: more rounds than the 6 of `make test`; a seed replays a run.
SENDENSE_CHAOS_ROUNDS ?= 24
SENDENSE_CHAOS_SEED ?=
SENDENSE_CHAOS_DATABASE ?= postgresql
SENDENSE_CHAOS_FAULTS ?=

.PHONY: test demo bench chaos deps system-deps test-assets lint typecheck pytest clean

# The type checks (a minute or more from a cold cache) run beside the test suite,
# whose first minutes wait on processes more than on the CPU; their output
# follows the tests', and either failing fails `make test`.
test: deps lint
	@log=$$(mktemp /tmp/sendense-mypy.XXXXXX); \
	$(VENV)/bin/mypy src tests bench demo > $$log 2>&1 & checks=$$!; \
	$(MAKE) --no-print-directory pytest; rc=$$?; \
	wait $$checks; typed=$$?; echo "mypy src tests bench demo:"; cat $$log; rm -f $$log; \
	[ $$rc -eq 0 ] && [ $$typed -eq 0 ]

# Full + incremental backup of a two-disk VM from a local vCenter simulator,
# through a hub, a node and the tunnel; both restore points verified.
demo: deps
	$(PY) demo/run.py

# Throughput beside nbdcopy in the same run; figures in bench/results.json.
bench: deps
	$(PY) bench/nbd_writer.py
	$(PY) bench/node_backup.py
	$(PY) bench/tunnel.py
	$(PY) bench/backup_tunnel.py
	$(PY) bench/wan.py
	$(PY) bench/verify.py
	$(PY) bench/restore.py
	$(PY) bench/console.py
	$(PY) bench/file_restore.py
	$(PY) bench/offsite_copy.py
	$(PY) bench/restore_chain.py
	$(PY) bench/restore_vm.py
	$(PY) bench/many_vms.py
	$(PY) bench/db_size.py

# Fault injection (issue 13): backups and prunes with processes killed at random,
# the repository full or unmounted, PostgreSQL stopped; invariants after each.
chaos: deps
	SENDENSE_CHAOS_ROUNDS=$(SENDENSE_CHAOS_ROUNDS) SENDENSE_CHAOS_SEED=$(SENDENSE_CHAOS_SEED) \
	SENDENSE_CHAOS_DATABASE=$(SENDENSE_CHAOS_DATABASE) SENDENSE_CHAOS_FAULTS=$(SENDENSE_CHAOS_FAULTS) \
	$(VENV)/bin/pytest -s -p no:cacheprovider tests/test_chaos.py

deps: system-deps $(STAMP) test-assets

# axe-core for the browser tests, from the npm registry (checked digest).
test-assets: $(STAMP)
	@$(PY) scripts/test_assets.py

system-deps:
	@scripts/system-deps.sh

# A venv from Debian's python3 with system site-packages: python3-libnbd exists
# only as a Debian package.
$(STAMP): pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench demo
	$(VENV)/bin/ruff format --check src tests bench demo

typecheck: $(STAMP)
	$(VENV)/bin/mypy src tests bench demo

# Two workers (pytest-xdist), a whole test file at a time on each: a module's
# fixtures stay in one process. The base directory is short (Unix socket paths
# under it stay below 108 bytes) and the run's own (two runs at once do not wipe
# each other's), removed after.
pytest: $(STAMP)
	@base=$$(mktemp -d /tmp/sdt.XXXXXX); \
	$(VENV)/bin/pytest -n 2 --dist loadfile --basetemp=$$base $(PYTEST_ARGS); rc=$$?; \
	rm -rf $$base; exit $$rc

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info
