# The documented entry points. `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint unit chromium screenshots bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: synthesise an ICS, ingest it into SQLite and serve the portals on http://127.0.0.1:8000
demo: install
	$(VENV)/bin/sharedcare demo

## test: lint, type-check, then the whole suite on SQLite (and PostgreSQL when SHAREDCARE_TEST_POSTGRES is set)
test: install lint unit

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

# Browser tests drive the system's Chromium (Playwright's own download does not work offline).
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium (apt)"; \
	  if [ "$$(id -u)" -eq 0 ]; then apt-get install -y -q chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }; \
	  else sudo apt-get install -y -q chromium; fi; }

unit: install chromium
	@if [ -n "$$SHAREDCARE_TEST_POSTGRES" ]; then echo "stores under test: SQLite and PostgreSQL"; \
	 else echo "stores under test: SQLite only (set SHAREDCARE_TEST_POSTGRES to add PostgreSQL)"; fi
	$(PY) -m pytest

## screenshots: the browser tests again, writing their pictures of each page to docs/screenshots (README)
screenshots: install chromium
	SHAREDCARE_SCREENSHOTS=docs/screenshots $(PY) -m pytest tests/e2e -q

## bench: the performance suite (figures and ratios; never pass/fail on time)
bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/governance.py
	$(PY) benchmarks/api.py  # builds var/bench/api-10000 once (about ten minutes), then reuses it
	$(PY) benchmarks/export.py
	$(PY) benchmarks/smart.py
	$(PY) benchmarks/portal.py
	$(PY) benchmarks/identity.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
