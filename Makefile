# Two commands for a fresh machine with Python 3.11+:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest chromium soak bench-storage bench-fanout bench-w2 bench-nats clean

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

# Benchmarks print JSON lines; their figures are recorded in docs/ with these commands.
bench-storage: $(STAMP)
	$(BIN)/python bench/storage_bench.py --publishers 1 32 256 --duration 5

bench-fanout: $(STAMP)
	$(BIN)/python bench/fanout.py --subscribers 10 100 --body-bytes 64 1024 --compare-coalescing

bench-w2: $(STAMP)
	for n in 1 32 256; do $(BIN)/tidings bench w2 --publishers $$n --duration 5 --json; done

# The first peer: nats-server (core NATS) on the W1 fanout shape.
bench-nats: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/peers/nats_w1.py --subscribers 10 100 --body-bytes 64 1024

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
