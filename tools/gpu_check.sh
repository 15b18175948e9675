#!/usr/bin/env bash
# One-shot GPU check of sparsecc's TensorRT plugins (see tools/gpu_check.py): the environment, every plugin
# kernel variant driven through TensorRT's own plugin layer and launched from its PTX through the CUDA driver
# with exactly the arguments TensorRT's AOT path passes, the kernel bench against cuBLAS/cuDNN, and the
# TensorRT tests where TensorRT is installed. Writes OUT/gpu_check.json. Fits in 10 minutes of GPU time.
#
#   tools/gpu_check.sh --prepare          # where a package index is reachable: put TensorRT's plugin layer
#                                         # (tensorrt-cu12-bindings, pure Python) in .gpu_check/layer
#   tools/gpu_check.sh --dry-run          # on a CPU: everything up to the CUDA calls
#   tools/gpu_check.sh [--out DIR]        # on the GPU machine (no network needed; the working tree and
#                                         # .gpu_check/ carry everything but torch, triton and numpy)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LAYER=.gpu_check/layer

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf .gpu_check/wheels "$LAYER" && mkdir -p .gpu_check/wheels "$LAYER"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d .gpu_check/wheels "tensorrt-cu12-bindings>=10.9"
    "$PY" - "$LAYER" .gpu_check/wheels/*.whl <<'PYEOF'
import sys, zipfile
layer, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:  # the pure-Python plugin layer and the wheel's metadata; not the compiled module
    z.extractall(layer, [n for n in z.namelist() if n.startswith("tensorrt_bindings/plugin/") or ".dist-info/" in n])
print(f"TensorRT's plugin layer from {wheel} is in {layer}/tensorrt_bindings/plugin")
PYEOF
    exit 0
fi

# Without an installed plugin layer, use the prepared copy (the GPU machines have no package index).
if [[ -d "$LAYER/tensorrt_bindings/plugin" ]] && ! "$PY" -c "import importlib.util as u, sys; \
sys.exit(u.find_spec('tensorrt_bindings') is None)" 2>/dev/null; then
    export SPARSECC_TRT_PLUGIN_LAYER="$PWD/$LAYER"
fi
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
# 9.5 minutes at most: the check's steps have their own budgets; this bounds the whole.
exec timeout 570 "$PY" tools/gpu_check.py "$@"
