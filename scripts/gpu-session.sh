#!/usr/bin/env bash
# Runs on the GPU machine, in the repository copy the device tool sends, the
# checks that wait for a device (docs/gpu.md, "The next session with a GPU").
# A session has 15 minutes of device time, the machine's start included, and
# carries at most 64 MiB a call, so the checks go in two calls, back to back
# (the machine is given back 30 s after a call, and what the first unpacked
# goes with it):
#   bash scripts/gpu-session.sh first    # carry .carry/gpu/bin.tar.xz: kernels, then e2e (~5 min)
#   bash scripts/gpu-session.sh second   # carry .carry/gpu/ort-cuda.tar.xz: engine, e2e-cuda, batching (~6 min)
# Each stage also runs alone: kernels, e2e, ort (unpack the provider),
# engine, e2e-cuda, batching. Logs go to $OUT (the device tool brings them
# back). Every stage has a time limit, so that a hang costs one stage.
set -uo pipefail
export OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
stage="${1:?stage: first, second, kernels, e2e, ort, engine, e2e-cuda or batching}"
ORT="$PWD/.deps/onnxruntime" # our core library, and the CUDA provider beside it
if [ ! -x bin/gpu/kernels.test ]; then
  if [ -f .carry/gpu/bin.tar.xz ]; then
    xz -dc .carry/gpu/bin.tar.xz | tar xf -
  else
    echo "no binaries: this machine is not the one the first call unpacked them on; carry .carry/gpu/bin.tar.xz again" >&2
    exit 3
  fi
fi

# ONNX Runtime's CUDA provider needs CUDA 13's runtime, cuBLAS, cuRAND and
# cuDNN 9. On the GPU machine they come with PyTorch, as NVIDIA's pip
# packages, which the dynamic loader does not search.
cuda_libs() {
  python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        if "stubs" not in so.split(os.sep):  # a stub libcuda would hide the driver's
            dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
}
if [ -z "${VOXSERVE_CUDA_LIBS:-}" ]; then
  VOXSERVE_CUDA_LIBS=$(cuda_libs)
  export VOXSERVE_CUDA_LIBS LD_LIBRARY_PATH="$VOXSERVE_CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

need_provider() {
  [ -f "$ORT/libonnxruntime_providers_cuda.so" ] && return 0
  echo "no CUDA provider beside $ORT: run the ort stage (carry .carry/gpu/ort-cuda.tar.xz)" >&2
  return 1
}

# bundle SRC DST [nobatch]: a copy of a reference bundle on the CUDA provider.
bundle() {
  cp -r "$1" "$2"
  python3 - "$2/bundle.yaml" "${3:-}" <<'PY'
import re, sys
p, nobatch = sys.argv[1], sys.argv[2]
s = open(p).read()
s = s.replace("\nprovenance:", "\nexecution:\n  providers: [cuda]\n  cuda: {cudnn_conv_algo_search: HEURISTIC}\nprovenance:", 1)
if nobatch:
    s = re.sub(r"dynamic_batching:\n(  .*\n)+", "", s)
open(p, "w").write(s)
PY
}

run_stage() {
  local s=$1 limit=$2
  echo "=== stage $s (limit ${limit}s) $(date -u +%T)"
  timeout --kill-after 10 "$limit" bash "$0" "$s"
  echo "=== stage $s: exit $? $(date -u +%T)"
}

CT=/tmp/voxserve-e2e
phantom() {
  [ -d "$CT" ] || bin/cuda/voxctl phantom --kind head-ct --matrix 512 --slice-thickness 0.625 --seed 300001 --out "$CT" --quiet
  ls -d "$CT"/*/ | head -1
}

case "$stage" in
first)
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } 2>&1 | tee "$OUT/device.txt"
  run_stage kernels 330
  run_stage e2e 150
  ;;
second)
  run_stage ort 45
  run_stage engine 180
  run_stage e2e-cuda 180
  run_stage batching 170
  ;;
kernels)
  NCU="${NCU:-}" OUT="$OUT" bash scripts/gpu-verify.sh 2>&1 | tee "$OUT/stage-kernels.log"
  ;;
e2e)
  ORT_LIB="$ORT/libonnxruntime.so.1" OUT="$OUT" bash scripts/gpu-e2e.sh 2>&1 | tee "$OUT/stage-e2e.log"
  ;;
ort)
  [ -f .carry/gpu/ort-cuda.tar.xz ] || { echo "carry .carry/gpu/ort-cuda.tar.xz" >&2; exit 1; }
  xz -dc .carry/gpu/ort-cuda.tar.xz | tar xf - -C "$ORT"
  ls -la "$ORT"
  # Where the loader finds what the provider needs (cuDNN is opened later, from LD_LIBRARY_PATH too).
  ldd "$ORT/libonnxruntime_providers_cuda.so" | grep -E "not found|cublas|cudart|curand|libcuda" | tee "$OUT/stage-ort.log"
  IFS=: read -ra dirs <<<"$VOXSERVE_CUDA_LIBS"
  for d in "${dirs[@]}"; do for f in "$d"/libcudnn.so*; do [ -e "$f" ] && echo "$f"; done; done | head -3 | tee -a "$OUT/stage-ort.log"
  ;;
engine)
  need_provider || exit 1
  (cd engine && VOXSERVE_REQUIRE_GPU=1 VOXSERVE_ORT_LIB="$ORT/libonnxruntime.so.1" ../bin/gpu/engine.test \
    -test.run 'Device|CUDA' -test.v -test.timeout 170s) 2>&1 | tee "$OUT/stage-engine.log"
  ;;
e2e-cuda)
  need_provider || exit 1
  # ich on the CUDA provider (device-bound I/O by default) with the GPU
  # kernels, on the 512x512 head CT of the e2e stage: DICOM bytes to
  # findings, measurements and the SR, the server's own timings per stage.
  repo=$(mktemp -d)
  bundle models/ich "$repo/ich"
  study=$(phantom)
  # The split per stage (Timings.stages), cold then warm: four requests
  # in one process, the first paying the session's first runs...
  echo "== voxctl, 4 requests in one process" | tee -a "$OUT/stage-e2e-cuda.log"
  bin/cuda/voxctl infer --model ich --model-repository "$repo" --dicom "$study" --gpu on --sr "$OUT/ich.sr.dcm" --repeat 4 \
    --onnxruntime-lib "$ORT/libonnxruntime.so.1" 2>&1 | grep -E "^run|timings|stages|provider|intracranial|volume|warning|error|voxctl:" | tee -a "$OUT/stage-e2e-cuda.log"
  rm -f "$OUT/ich.sr.dcm"
  # ...and warm latency: the same kind of study (voxbench's phantom, seed
  # 300000) sent again and again to the in-process server, CPU and GPU.
  for g in on off; do
    echo "== voxbench, --gpu $g, CUDA provider" | tee -a "$OUT/stage-e2e-cuda.log"
    VOXSERVE_ORT_LIB="$ORT/libonnxruntime.so.1" bin/cuda/voxbench --model ich --model-repository "$repo" --gpu "$g" \
      --phantom head-ct --phantom-matrix 512 --phantom-slice-mm 0.625 --outputs findings,measurements,sr \
      --concurrency 1 --duration 12s --warmup 4s --quiet 2>&1 | tee -a "$OUT/stage-e2e-cuda.log"
  done
  ;;
batching)
  need_provider || exit 1
  tmp=$(mktemp -d)
  for m in pneumothorax ich; do
    for mode in on off; do
      mkdir -p "$tmp/$mode"
      bundle "models/$m" "$tmp/$mode/$m" "$([ "$mode" = off ] && echo nobatch)"
      echo "== $m, dynamic batching $mode, CUDA provider" | tee -a "$OUT/stage-batching.log"
      VOXSERVE_ORT_LIB="$ORT/libonnxruntime.so.1" bin/cuda/voxbench --model "$m" --model-repository "$tmp/$mode" \
        --concurrency 1,8,32 --duration 6s --warmup 2s --quiet 2>&1 | tee -a "$OUT/stage-batching.log"
    done
  done
  ;;
*)
  echo "unknown stage $stage" >&2
  exit 2
  ;;
esac
