# Set-up is part of every target: a .venv with the project installed from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= demo-work

.PHONY: setup demo test mmdet test-mmdet clean

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

# mmdetection (optional): builds the mmcv wheel against the installed torch once (~15 min on 2 cores,
# cached in ~/.cache/clothret/wheels), then installs mmdet 3.3 + mmengine. `make test` skips the
# mmdetection tests when it is absent; `make test-mmdet` runs just them.
mmdet: $(STAMP)
	infra/mmdet/build_mmcv.sh
	$(BIN)/python -m pip install --quiet -e '.[dev,mmdet]'

test-mmdet: mmdet
	$(BIN)/python -m pytest -q tests/test_mmdet_backend.py

clean:
	rm -rf $(WORKDIR) .pytest_cache
