# One entry point for people and CI. Every target creates its venv if missing and is idempotent.
#   .venv        dev and test: the project with `.[dev]` (make install, test, lint, bench)
#   .venv-serve  serving only: torch, the project's core and `.[serve]`, no dev or test tools (make serve)
#   .venv-ls     a real Label Studio server and its SDK, for the integration tier only (make integration):
#                its own venv because label-studio-sdk pins numpy and opencv below what the project uses
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYPROJECT_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(PYPROJECT_HASH)
SERVE_VENV := .venv-serve
SERVE_PY := $(SERVE_VENV)/bin/python
SERVE_STAMP := $(SERVE_VENV)/.installed-$(PYPROJECT_HASH)
# torch first, pinned to the builds available offline on this machine class (see README)
TORCH := "torch==2.14.1" "torchvision==0.29.1"
SAM2 := "sam2==1.1.0"
EFFICIENTSAM := "efficientsam==1.0.0"
export BENTOML_DO_NOT_TRACK := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

TRITON_HOME := .triton

LS_VENV := .venv-ls
LS_STAMP := $(LS_VENV)/.installed-label-studio-1.23.2

SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 3000

.PHONY: install install-serve install-browser install-label-studio test integration lint serve bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	# SAM 2.1 (backend sam2): after torch, without build isolation (else pip builds against a second
	# torch for minutes) and without its optional CUDA extension (checked in a fresh venv: 1 min)
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation $(SAM2)
	# sam2's wheel also installs its own top-level `training` package, which would shadow ours
	rm -rf $(VENV)/lib/python3*/site-packages/training
	# EfficientViT-SAM (backend light); its only dependencies (torch, torchvision, numpy) are above
	$(PIP) install -q --no-deps $(EFFICIENTSAM)
	# a real tritonserver for tests/test_triton_live.py, kept out of the venv (pytriton pins numpy<2)
	$(PIP) install -q --no-deps --target $(TRITON_HOME) "nvidia-pytriton==0.7.0" \
		|| echo "tritonserver not installed: the live Triton tests will skip"
	rm -f $(VENV)/.installed-* && touch $@

$(SERVE_PY):
	$(PYTHON) -m venv $(SERVE_VENV)

$(SERVE_STAMP): pyproject.toml | $(SERVE_PY)
	$(SERVE_PY) -m pip install -q $(TORCH)
	$(SERVE_PY) -m pip install -q -e ".[serve]"
	SAM2_BUILD_CUDA=0 $(SERVE_PY) -m pip install -q --no-build-isolation $(SAM2)
	rm -rf $(SERVE_VENV)/lib/python3*/site-packages/training
	$(SERVE_PY) -m pip install -q --no-deps $(EFFICIENTSAM)
	rm -f $(SERVE_VENV)/.installed-* && touch $@

install: $(STAMP)

# Debian's chromium and chromium-driver for tests/test_ui_browser.py (apt, as root; no browser download
# at run time). Without them that test fails and names this target.
install-browser:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && { apt-get install -y -q chromium chromium-driver >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }; } \
		|| echo "chromium not installed (needs root for apt): tests/test_ui_browser.py will fail"

$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q "label-studio==1.23.2"
	touch $@

install-label-studio: $(LS_STAMP)

install-serve: $(SERVE_STAMP)

lint: install
	$(VENV)/bin/ruff check models serving sesam training export tests benchmarks
	$(VENV)/bin/ruff format --check models serving sesam training export tests benchmarks

test: install install-browser
	$(VENV)/bin/ruff check models serving sesam training export tests benchmarks
	# two workers (the CI machine has two cores), one BLAS thread each so they do not oversubscribe
	OMP_NUM_THREADS=1 $(PY) -m pytest -q --durations=30 -m "not integration" -n 2 --dist loadfile

# The integration tier: a real Label Studio server talking to the service (docs/labeling.md)
integration: install install-label-studio
	$(PY) -m pytest -q --durations=10 -m integration

serve: install-serve
	$(SERVE_VENV)/bin/bentoml serve serving.service:SegmentationService --host $(SERVE_HOST) --port $(SERVE_PORT)

bench: install
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(LS_VENV) $(TRITON_HOME) .pytest_cache .ruff_cache
