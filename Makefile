# Two commands for a fresh machine with Python 3.11+:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest chromium soak reliability bench bench-quick bench-storage bench-fanout \
	bench-w2 bench-nats clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "tidings needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tidings demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP) chromium
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest -m "not slow" -p no:cacheprovider

# The dashboard's browser test drives Debian's Chromium (never `playwright install`).
# Installed here when missing and apt-get is usable (root); otherwise the test skips and says why.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium: /usr/bin/chromium is missing and apt-get is not usable here (needs root):" \
			"the browser tests will skip (as root: apt-get install -y chromium)"; \
	else \
		echo "chromium: installing Debian's chromium for the browser tests (apt-get install -y chromium)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -qq chromium >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }; } || \
		echo "chromium: apt-get install failed: the browser tests will skip"; \
	fi

soak: $(STAMP)
	$(BIN)/pytest -m slow -p no:cacheprovider

# Every workload against tidings and its peers (installed here: the bench extra), interleaved,
# median of 3 runs; writes bench/results/<date>.json and regenerates docs/benchmarks.md (~20-25 min).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --runs 3

# One short run of everything (about 3 minutes), to check the machinery; results go to /tmp.
bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --quick --out /tmp/tidings-bench-quick
# The long reliability runs (docs/reliability.md): crash loop >= 100 kills and 1,000,000
# acknowledged messages, >= 100 power cuts, a 5,000-client reconnect storm, and the NATS crash
# loop (a node and a gateway killed per cycle, ~15 minutes, >= 20 cycles).
reliability: $(STAMP)
	TIDINGS_RELIABILITY_LONG=1 $(BIN)/pytest -m slow -p no:cacheprovider -s tests/reliability/test_crash_loop.py
	TIDINGS_RELIABILITY_LONG=1 $(BIN)/pytest -m slow -p no:cacheprovider -s tests/reliability/test_storm.py
	TIDINGS_RELIABILITY_LONG=1 $(BIN)/pytest -m slow -p no:cacheprovider -s tests/reliability/test_nats_crash_loop.py

# Benchmarks print JSON lines; their figures are recorded in docs/ with these commands.
bench-storage: $(STAMP)
	$(BIN)/python bench/storage_bench.py --publishers 1 32 256 --duration 5

bench-fanout: $(STAMP)
	$(BIN)/python bench/fanout.py --subscribers 10 100 --body-bytes 64 1024 --compare-coalescing

bench-w2: $(STAMP)
	for n in 1 32 256; do $(BIN)/tidings bench w2 --publishers $$n --duration 5 --json; done
	$(BIN)/tidings bench w2 --publishers 256 --connections 8 --duration 5 --json

# The first peer: nats-server (core NATS) on the W1 fanout shape.
bench-nats: $(BENCH_STAMP)
	$(BIN)/python bench/peers/nats_w1.py --subscribers 10 100 --body-bytes 64 1024

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
