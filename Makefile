# Set-up is part of every target: a .venv with the project installed from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WORKDIR ?= demo-work

.PHONY: setup demo test mmdet test-mmdet gpu-check clean

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

# On a machine with a CUDA GPU (driver for CUDA 13): a venv with the gpu extra (dask-cuda, faiss-gpu), then the
# GPU tests and a short throughput run, every worker log line and the results in $(GPU_OUT)/ (under 5 minutes
# on one H100). Without make (e.g. an image whose Python has the packages): PYTHON=python3 infra/gpu/check.sh DIR
GPU_VENV := .venv-gpu
GPU_OUT ?= gpu-check

$(GPU_VENV)/.installed-stamp: pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e '.[gpu,test]'
	touch $@

gpu-check: $(GPU_VENV)/.installed-stamp
	PYTHON=$(GPU_VENV)/bin/python infra/gpu/check.sh $(GPU_OUT)

clean:
	rm -rf $(WORKDIR) .pytest_cache
