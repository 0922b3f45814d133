#!/usr/bin/env bash
# Installs ONNX Runtime's CUDA execution provider beside the core library
# (which looks for providers in its own folder): libonnxruntime_providers_cuda.so
# and libonnxruntime_providers_shared.so from PyPI's onnxruntime-gpu wheel of
# the same version as the core library (1.30.0, built for CUDA 13 and
# cuDNN 9), checked by sha256. The CUDA 13 runtime, cuBLAS and cuDNN 9
# themselves come from the system (the GPU image's base, or a GPU machine's
# install); see docs/gpu.md. Idempotent.
set -euo pipefail

VERSION=1.30.0
WHEEL=onnxruntime_gpu-1.30.0-cp312-cp312-manylinux_2_28_x86_64.whl
WHEEL_SHA256=6acc0f4b3d5ac5f2984432faa59dd8fcce6775f8b43a7140afa0f322c7a703b1
DEST="${1:-.deps/onnxruntime}"

if [ -f "$DEST/libonnxruntime_providers_cuda.so" ] && [ "$(cat "$DEST/GPU_VERSION" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
if [ "$(cat "$DEST/VERSION" 2>/dev/null)" != "$VERSION" ]; then
  echo "fetch-onnxruntime-gpu: the core library in $DEST is not ONNX Runtime $VERSION (run make deps first)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-onnxruntime-gpu: downloading onnxruntime-gpu==$VERSION from PyPI (about 250 MB)"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$tmp" "onnxruntime-gpu==$VERSION"
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c --status || { echo "fetch-onnxruntime-gpu: checksum mismatch for $WHEEL" >&2; exit 1; }
python3 - "$tmp/$WHEEL" "$DEST" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so"):
        with z.open("onnxruntime/capi/" + name) as src, open(os.path.join(dest, name + ".tmp"), "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(os.path.join(dest, name + ".tmp"), os.path.join(dest, name))
PY
echo "$VERSION" > "$DEST/GPU_VERSION"
echo "fetch-onnxruntime-gpu: installed the CUDA provider into $DEST"
