# Developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt
REFERENCE_DIR ?= ../shared/reference

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m nextscale.demo --out demo

# Speed on this machine (about 10 minutes on an idle 2-core CPU): table on stdout, numbers in JSON.
bench: install
	$(BIN)/python benchmarks/bench.py --out bench_results/bench.json

clean:
	rm -rf $(VENV) demo .pytest_cache
