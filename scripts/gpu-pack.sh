#!/usr/bin/env bash
# Packs what a GPU session carries to the device machine (docs/gpu.md, "The
# next session with a GPU"), into .carry/gpu/ (git-ignored):
#   bin.tar.xz          bin/cuda (voxserve, voxctl, voxbench with the cuda
#                       tag), bin/gpu (kernels.test, engine.test) and our
#                       ONNX Runtime core library (make deps; built with the
#                       CUDA provider bridge, which python's CPU package is
#                       not): ~51 MiB
#   ort-cuda.part1..3   ONNX Runtime's CUDA provider (make deps-gpu), xz'ed
#                       and cut in three (~57 MiB each), since one call
#                       carries at most 64 MiB with the repository
# Then scripts/gpu-session.sh runs the checks there, stage by stage.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s deps build-cuda gpu-test-binaries
out=.carry/gpu
mkdir -p "$out"
grep -qx '/.carry/' "$(git rev-parse --git-path info/exclude)" || echo '/.carry/' >>"$(git rev-parse --git-path info/exclude)"
tar cf - bin/cuda bin/gpu .deps/onnxruntime/libonnxruntime.so.1 .deps/onnxruntime/VERSION | xz -T0 -6 >"$out/bin.tar.xz"
if [ "${WITH_PROVIDER:-1}" = 1 ]; then
  make -s deps-gpu
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tar cf - -C .deps/onnxruntime libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so | xz -T0 -6 >"$tmp/ort-cuda.tar.xz"
  split -n 3 -d -a 1 "$tmp/ort-cuda.tar.xz" "$tmp/part"
  for i in 0 1 2; do mv "$tmp/part$i" "$out/ort-cuda.part$((i + 1))"; done
fi
ls -la "$out"
