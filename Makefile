# Developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt
REFERENCE_DIR ?= ../shared/reference

.PHONY: install browser test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

test: install browser
	$(BIN)/python -m pytest -q

# Debian's Chromium for the web app's browser tests (tests/test_serve.py), installed when missing and we are
# root with apt-get; otherwise nothing happens and those tests are skipped, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests (apt-get) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "note: chromium could not be installed: the browser tests will be skipped"; }

demo: install
	$(BIN)/python -m nextscale.demo --out demo

# Speed on this machine (about 8 minutes on an idle 2-core CPU): table on stdout, numbers in JSON.
bench: install
	$(BIN)/python benchmarks/bench.py --out bench_results/bench.json

clean:
	rm -rf $(VENV) demo .pytest_cache
