#!/usr/bin/env bash
# Run by `bentoml containerize` after the bento's Python packages (bentofile.yaml docker.setup_script):
# the SAM family packages that cannot be plain requirements, installed as `make install-serve` does.
set -euo pipefail
# BentoML's image installs into a uv virtual environment without pip; elsewhere use pip
if command -v uv >/dev/null; then
  install() { uv pip install --python "$(command -v python)" "$@"; }
else
  install() { python -m pip install --no-cache-dir "$@"; }
fi
# SAM 2.1 (backend sam2): against the torch already installed, without its optional CUDA extension;
# building without isolation needs setuptools in the environment (a uv venv has none)
install setuptools wheel
SAM2_BUILD_CUDA=0 install --no-build-isolation "sam2==1.1.0"
# sam2's wheel also installs a top-level `training` package, which would shadow the project's own
python -c "import pathlib, shutil, sysconfig; shutil.rmtree(pathlib.Path(sysconfig.get_paths()['purelib']) / 'training', ignore_errors=True)"
# EfficientViT-SAM (backend light); its only dependencies (torch, torchvision, numpy) are installed
install --no-deps "efficientsam==1.0.0"
