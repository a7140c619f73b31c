#!/usr/bin/env bash
# Build the mmcv wheel (with its C++ ops) against the torch installed in the venv, once, and install it:
# the wheel is cached under $WHEELS/torch-<version>/ and reused by later runs (15 min on 2 cores).
set -euo pipefail
PY=$(realpath -s "${PY:-.venv/bin/python}")
WHEELS=${WHEELS:-$HOME/.cache/clothret/wheels}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
torch_version=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
out="$WHEELS/torch-$torch_version"
if ls "$out"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  echo "mmcv $MMCV_VERSION wheel for torch $torch_version: cached in $out"
  "$PY" -m pip install --quiet "$out"/mmcv-"$MMCV_VERSION"-*.whl
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
source_dir=$("$PY" "$(dirname "$0")/fetch_mmcv.py" --version "$MMCV_VERSION" --dest "$work")
echo "building mmcv $MMCV_VERSION against torch $torch_version in $source_dir (about 15 min on 2 cores)"
mkdir -p "$out"
(cd "$source_dir" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" -m pip wheel --no-build-isolation --no-deps -w "$out" .)
ls "$out"/mmcv-"$MMCV_VERSION"-*.whl
"$PY" -m pip install --quiet "$out"/mmcv-"$MMCV_VERSION"-*.whl
