#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI): fetch the wheels a GPU host without network needs for the
# device benchmarks into .whl/ at the repository root (git ignores it; name it in the device
# tool's `carry`). Only what that host's image lacks is fetched: it has numpy, torch with CUDA,
# onnx, onnxruntime (CPU), opencv, httpx, rich and matplotlib; not cryptography, which the
# ModelRuntime pair (a TUF-verified model pull from a local sink) needs, nor the sink's starlette,
# and uvicorn. Versions come from constraints.txt,
# the same pins as the suite. The project itself travels as source (the working tree).
#
# Not fetched: onnxruntime-gpu. Its wheel is about 244 MiB, over the 64 MiB one device call
# carries; the GPU inference benchmark then runs the same network with the host's PyTorch on CUDA
# (benchmarks/gpu.py) and says so in its notes.
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${DEVICE_PYTHON:-3.12}"  # the GPU host's python3
dest=.whl
limit_mib=56  # leaves room for the working tree within the 64 MiB a call carries
packages=(av pydantic pydantic_core annotated-types typing-inspection zstandard lz4 mcap pyserial
          smbus2 pynmea2 tomli_w tuf securesystemslib zxing-cpp cryptography cffi pycparser
          starlette uvicorn)
pins=()
for p in "${packages[@]}"; do
    pin=$(grep -i -E "^${p}==" constraints.txt || true)
    [ -n "$pin" ] || { echo "wheelhouse: $p has no pin in constraints.txt" >&2; exit 2; }
    pins+=("$pin")
done
rm -rf "$dest" && mkdir -p "$dest"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
    --implementation cp "${platforms[@]}" -d "$dest" "${pins[@]}"
size_mib=$(( $(du -sk "$dest" | cut -f1) / 1024 ))
echo "wheelhouse: $(ls "$dest" | wc -l) wheels, ${size_mib} MiB in $dest"
if [ "$size_mib" -gt "$limit_mib" ]; then
    echo "wheelhouse: over ${limit_mib} MiB: a device call carries 64 MiB in all" >&2
    exit 1
fi
