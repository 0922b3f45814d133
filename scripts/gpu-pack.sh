#!/usr/bin/env bash
# Packs what a GPU session carries to the device machine (docs/gpu.md, "The
# next session with a GPU"), into .carry/gpu/ (git-ignored), one file per
# call, each under the 64 MiB a call carries with the repository:
#   bin.tar.xz       bin/cuda/voxctl and voxbench (cuda tag), bin/gpu
#                    (kernels.test, engine.test) and our ONNX Runtime core
#                    library (make deps; built with the CUDA provider
#                    bridge, which python's CPU package is not): ~34 MiB
#   ort-cuda.tar.xz  ONNX Runtime's CUDA provider (make deps-gpu) with the
#                    machine code of every GPU but Hopper's (sm_90) taken
#                    out (scripts/prune-fatbin): 272 MB, 48 MiB packed
#                    instead of 171 MiB. NVIDIA's cuobjdump must find the
#                    same sm_90 images in it as in the original.
# Then scripts/gpu-session.sh first and second run the checks there.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s deps deps-cuda build-cuda gpu-test-binaries
out=.carry/gpu
mkdir -p "$out"
grep -qsx '/.carry/' "$(git rev-parse --git-path info/exclude)" || echo '/.carry/' >>"$(git rev-parse --git-path info/exclude)"
# xz -9: a 64 MiB dictionary spans the binaries, which share most of their code.
tar cf - bin/cuda/voxctl bin/cuda/voxbench bin/gpu .deps/onnxruntime/libonnxruntime.so.1 .deps/onnxruntime/VERSION | xz -T0 -9 >"$out/bin.tar.xz"
if [ "${WITH_PROVIDER:-1}" = 1 ]; then
  make -s deps-gpu
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  ort=.deps/onnxruntime
  go run ./scripts/prune-fatbin -arch 90 "$ort/libonnxruntime_providers_cuda.so" "$tmp/libonnxruntime_providers_cuda.so"
  cuobjdump=$PWD/.deps/cuda/bin/cuobjdump
  for v in original pruned; do
    mkdir -p "$tmp/$v"
    lib=$PWD/$ort/libonnxruntime_providers_cuda.so
    [ "$v" = pruned ] && lib=$tmp/libonnxruntime_providers_cuda.so
    (cd "$tmp/$v" && "$cuobjdump" -arch sm_90 -xelf all "$lib" >/dev/null && ls | sort -t. -k2 -n | xargs sha256sum | cut -c1-64 >../$v.sums)
  done
  cmp -s "$tmp/original.sums" "$tmp/pruned.sums" || { echo "gpu-pack: the pruned provider's sm_90 images differ from the original's" >&2; exit 1; }
  echo "gpu-pack: cuobjdump finds the same $(wc -l <"$tmp/pruned.sums") sm_90 images in the pruned provider"
  cp "$ort/libonnxruntime_providers_shared.so" "$tmp/"
  tar cf - -C "$tmp" libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so | xz -T0 -6 >"$out/ort-cuda.tar.xz"
fi
rm -f "$out"/ort-cuda.part*
ls -la "$out"
