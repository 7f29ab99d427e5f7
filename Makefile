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

clean:
	rm -rf $(VENV) demo .pytest_cache
