# One entry point for people and CI. Every target creates .venv if missing and is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export BENTOML_DO_NOT_TRACK := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

TRITON_HOME := .triton

SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 3000

.PHONY: install test lint serve bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	# torch first, pinned to the builds available offline on this machine class (see README)
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[dev]"
	# a real tritonserver for tests/test_triton_live.py, kept out of the venv (pytriton pins numpy<2)
	$(PIP) install -q --no-deps --target $(TRITON_HOME) "nvidia-pytriton==0.7.0" \
		|| echo "tritonserver not installed: the live Triton tests will skip"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check models serving sesam training export tests benchmarks
	$(VENV)/bin/ruff format --check models serving sesam training export tests benchmarks

test: install
	$(VENV)/bin/ruff check models serving sesam training export tests benchmarks
	$(PY) -m pytest -q

serve: install
	$(VENV)/bin/bentoml serve serving.service:SegmentationService --host $(SERVE_HOST) --port $(SERVE_PORT)

bench: install
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) $(TRITON_HOME) .pytest_cache .ruff_cache
