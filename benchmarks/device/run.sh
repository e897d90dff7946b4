#!/usr/bin/env bash
# Run THERE (the GPU host, from the repository root): the hardware-encoder and GPU-inference
# benchmarks, writing the same results.json / RESULTS.md / PNGs as `python -m benchmarks`.
#   benchmarks/device/run.sh OUT_DIR [--quick]
# With the device tool: carry [".whl"], command
#   benchmarks/device/run.sh "$OUT/device"
# Wheels in .whl/ (benchmarks/device/wheelhouse.sh) are installed into /tmp/capsight-site first;
# without .whl/ it runs on what the interpreter has, which is how the suite checks it here, on a
# machine without a GPU: every benchmark then runs on the CPU or says why it is skipped.
# DEVICE_BENCHMARKS (space-separated names) replaces the default list; DEVICE_WHEELS names another
# folder of wheels ("" for none); PYTHON another interpreter (default python3).
# A copy of the tree without .git (the device tool sends none) records the commit named by
# CAPSIGHT_SOURCE_COMMIT in results.json, with its dirty flag unknown.
set -euo pipefail
out="$(realpath -m "${1:?usage: benchmarks/device/run.sh OUT_DIR [--quick]}")"
shift
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
wheels="${DEVICE_WHEELS-.whl}"
if [ -n "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
    site=/tmp/capsight-site
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
only=()
for name in ${DEVICE_BENCHMARKS:-encoders inference_regression gpu_inference}; do
    only+=(--only "$name")
done
exec "$python" -m benchmarks --out "$out" "${only[@]}" "$@"
