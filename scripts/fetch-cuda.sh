#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler (nvcc, cicc, ptxas), headers (cuda.h) and cuobjdump
# from NVIDIA's PyPI wheels, verified by the hashes in
# scripts/requirements-cuda.txt, into DEST (default .deps/cuda): enough to
# compile src/voxkernels.cu to PTX and to build the cuda-tagged Go code.
# No driver and no GPU are needed. Idempotent.
set -euo pipefail

DEST="${1:-.deps/cuda}"
REQ="$(dirname "$0")/requirements-cuda.txt"
STAMP="$DEST/.requirements"

if [ -x "$DEST/bin/nvcc" ] && [ -f "$STAMP" ] && cmp -s "$REQ" "$STAMP"; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-cuda: downloading the CUDA 13.0 compiler and headers from PyPI"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
  --platform manylinux2010_x86_64 --require-hashes -r "$REQ" -d "$tmp"
rm -rf "$DEST"
mkdir -p "$tmp/x" "$DEST"
for w in "$tmp"/*.whl; do
  python3 -m zipfile -e "$w" "$tmp/x"
done
cp -a "$tmp/x/nvidia/cu13/." "$DEST/"
chmod +x "$DEST"/bin/* "$DEST"/nvvm/bin/* 2>/dev/null || true
cp "$REQ" "$STAMP"
echo "fetch-cuda: installed $("$DEST/bin/nvcc" --version | tail -1) into $DEST"
