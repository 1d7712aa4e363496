#!/usr/bin/env bash
# Creates .venv and installs the pinned OpenMMLab 2.x stack plus this package (editable).
#
# Idempotent: every step records a stamp keyed by the hash of its inputs, so a second run with
# nothing changed only hashes files. Environment:
#   PYTHON       interpreter that creates the venv (default: python3.11)
#   VENV         venv directory (default: .venv)
#   MMCV_WHEELS  folder searched for a prebuilt mmcv 2.1.0 wheel (default: ../shared/wheels)
#   FORCE_CUDA   1 builds the CUDA kernels of replk_mm's extension (needs nvcc)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
MMCV_VERSION=2.1.0
MMCV_WHEELS=${MMCV_WHEELS:-$ROOT/../shared/wheels}
STAMPS=$VENV/.replk_mm_stamps
PY=$VENV/bin/python
PIP="$PY -m pip --disable-pip-version-check"

say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# 1. The virtual environment.
if [ ! -x "$PY" ]; then
  command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
  say "creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

# 2. torch, torchvision and the build tools.
key=$(hash_of requirements/build.txt)
if stamp_ok build "$key"; then
  say "torch: up to date ($($PY -c 'import torch; print(torch.__version__)'))"
else
  say "installing torch / torchvision / build tools (requirements/build.txt)"
  $PIP install -r requirements/build.txt
  stamp_set build "$key"
fi

# 3. mmcv with its compiled ops: a cached wheel when one fits, else the PyPI sdist.
torch_version=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$($PY -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key="$MMCV_VERSION-$torch_version-$py_tag"
mmcv_installed() { $PY -c "import importlib.metadata as m; assert m.version('mmcv') == '$MMCV_VERSION'" 2>/dev/null; }
if stamp_ok mmcv "$key" && mmcv_installed; then
  say "mmcv: up to date ($MMCV_VERSION with ops, torch $torch_version)"
else
  wheel=""
  # The cached wheel is built for torch 2.14.1 (../shared/README.md); only use it for that torch.
  if [ "$torch_version" = "2.14.1" ] && [ -d "$MMCV_WHEELS" ]; then
    wheel=$(ls "$MMCV_WHEELS"/mmcv-$MMCV_VERSION-$py_tag-$py_tag-linux_$(uname -m).whl 2>/dev/null | head -n1 || true)
  fi
  if [ -n "$wheel" ]; then
    say "mmcv: installing cached wheel $(basename "$wheel")"
    $PIP install --no-deps "$wheel"
  else
    say "mmcv: no cached wheel for $py_tag / torch $torch_version; building the $MMCV_VERSION sdist with ops (15-20 min on 2 cores)"
    src=$(mktemp -d)
    $PIP download --no-deps --no-binary :all: --no-build-isolation -d "$src" "mmcv==$MMCV_VERSION"
    tar -xzf "$src"/mmcv-$MMCV_VERSION.tar.gz -C "$src"
    # torch >= 2.6 headers need C++20; mmcv 2.1.0's setup.py hard-codes -std=c++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$src/mmcv-$MMCV_VERSION/setup.py"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP install --no-build-isolation --no-deps "$src/mmcv-$MMCV_VERSION"
    rm -rf "$src"
  fi
  stamp_set mmcv "$key"
fi

# 4. mmengine, mmseg, mmdet, mmpretrain and test tools.
key=$(hash_of requirements/runtime.txt requirements/tests.txt)
if stamp_ok runtime "$key"; then
  say "OpenMMLab stack: up to date"
else
  say "installing mmengine / mmseg / mmdet / mmpretrain and test tools"
  $PIP install -r requirements/runtime.txt -r requirements/tests.txt "mmcv==$MMCV_VERSION"
  $PY -c 'import mmcv.ops' || { echo "error: mmcv's compiled ops do not import (see above)" >&2; exit 1; }
  stamp_set runtime "$key"
fi

# 5. This package, editable, with its C++ (and, with FORCE_CUDA=1, CUDA) extension.
key=$(hash_of setup.py $(find replk_mm/ops/csrc -type f 2>/dev/null | sort))-${FORCE_CUDA:-0}
if stamp_ok package "$key" && $PY -c 'import replk_mm' 2>/dev/null; then
  say "replk_mm: up to date"
else
  say "installing replk_mm (editable, building its extension)"
  # --use-pep517: pip 23 would otherwise run `setup.py develop`, which setuptools 80 turns into an
  # isolated `pip install -e .` that cannot see torch.
  $PIP install --no-build-isolation --no-deps --use-pep517 -e .
  stamp_set package "$key"
fi
say "ready: $($PY -c 'import torch, mmcv, mmengine, mmseg, mmdet, mmpretrain, replk_mm; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, mmseg {mmseg.__version__}, mmdet {mmdet.__version__}, mmpretrain {mmpretrain.__version__}, replk_mm {replk_mm.__version__}")')"
