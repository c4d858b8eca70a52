# The two commands of the README: `make demo` and `make test`. Each sets up from nothing:
# a virtualenv in .venv, torch (the CPU build), the package in editable mode.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.crypten-lite-installed
# torch is pinned to the CPU wheel this platform provides; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-fast test-loaded lint typecheck demo bench clean

$(STAMP): pyproject.toml Makefile
	@# iproute2 (ip, tc) lets tests/e2e build simulated hosts; without it they skip with a reason.
	@command -v ip >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2) >/dev/null 2>&1 || \
		echo "note: could not install iproute2; the multi-host tests will skip"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,examples]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

# mypy --strict runs against a regular (non-editable) install: the package-dir mapping of
# protocols/ and launcher/ is invisible to static tools in an editable one.
typecheck: setup
	rm -rf build .typecheck
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --target .typecheck .
	rm -rf build
	cd .typecheck && $(abspath $(PY)) -m mypy --strict --no-incremental crypten_lite
	rm -rf .typecheck

test: setup lint typecheck
	$(PY) -m pytest -q

# The inner loop: pure functions, N parties as threads, and the static checks of the tree
# (no processes, no sockets, no network namespaces).
FAST_TESTS := tests/unit tests/mpc tests/test_architecture.py tests/test_supported_ops.py
test-fast: setup
	$(PY) -m pytest -q -x $(FAST_TESTS)

# The whole suite LOADED_RUNS times in a row while LOADED_HOGS CPU-bound processes compete for
# the cores: proof that no test depends on how fast one process runs relative to another. The
# hogs are killed by their pids when the recipe's shell exits, whether the runs passed or not.
LOADED_RUNS ?= 3
LOADED_HOGS ?= 2
test-loaded: setup
	@hogs=""; \
	trap 'kill $$hogs 2>/dev/null; wait $$hogs 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq $(LOADED_HOGS)); do sh -c 'while :; do :; done' & hogs="$$hogs $$!"; done; \
	echo "test-loaded: $(LOADED_HOGS) CPU hogs (pids$$hogs), $(LOADED_RUNS) runs"; \
	for run in $$(seq $(LOADED_RUNS)); do \
		start=$$(date +%s); \
		$(PY) -m pytest -q -p no:cacheprovider || { echo "test-loaded: run $$run failed"; exit 1; }; \
		echo "test-loaded: run $$run/$(LOADED_RUNS) passed in $$(( $$(date +%s) - start )) s"; \
	done

demo: setup
	$(VENV)/bin/crypten-lite launch -n 2 --dealer examples/private_inference.py

bench: setup
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
