# Set-up is part of every target: a .venv with the project installed from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= demo-work

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/clothret demo --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(WORKDIR) .pytest_cache
