#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI, in the project's environment: ./dev.sh setup): fetch the
# wheels a GPU host without network needs for the device benchmarks into .whl/ at the repository
# root (git ignores it; name it in the device tool's `carry`). Which wheels: benchmarks/wheelhouse.py,
# what the device benchmarks import and everything that requires in turn, less what the host's
# image has (numpy, torch with CUDA, onnx, onnxscript, onnxruntime (CPU), opencv, httpx, rich and
# matplotlib, with what they require); versions from constraints.txt, the same pins as the suite.
# The project itself travels as source (the working tree).
#
# Not fetched: onnxruntime-gpu. Its wheel is about 244 MiB, over the 64 MiB one device call
# carries; the GPU inference benchmark then runs the same network with the host's PyTorch on CUDA
# (benchmarks/gpu.py) and says so in its notes.
#   DEVICE_PYTHON: the host's Python (default 3.12); PYTHON: the project's interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${DEVICE_PYTHON:-3.12}"  # the GPU host's python3
python="${PYTHON:-.venv/bin/python}"
dest=.whl
limit_mib=56  # leaves room for the working tree within the 64 MiB a call carries
[ -x "$python" ] || command -v "$python" >/dev/null || {
    echo "wheelhouse: no $python: run ./dev.sh setup first (the wheels are resolved from it)" >&2
    exit 2
}
pins=()
while IFS= read -r pin; do pins+=("$pin"); done < <("$python" -m benchmarks.wheelhouse --python "$py")
[ "${#pins[@]}" -gt 0 ] || { echo "wheelhouse: nothing to fetch (see the error above)" >&2; exit 2; }
rm -rf "$dest" && mkdir -p "$dest"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
    --implementation cp "${platforms[@]}" -d "$dest" "${pins[@]}"
size_mib=$(( $(du -sk "$dest" | cut -f1) / 1024 ))
echo "wheelhouse: $(ls "$dest" | wc -l) wheels, ${size_mib} MiB in $dest"
if [ "$size_mib" -gt "$limit_mib" ]; then
    echo "wheelhouse: over ${limit_mib} MiB: a device call carries 64 MiB in all" >&2
    exit 1
fi
