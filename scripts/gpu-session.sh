#!/usr/bin/env bash
# Runs on the GPU machine, in the repository copy the device tool sends, the
# checks that wait for a device, one stage per call (each fits the 10-minute
# limit of a call). Logs go to $OUT (the device tool brings them back).
#   bash scripts/gpu-session.sh kernels    # needs .carry/gpu/bin.tar.xz (scripts/gpu-pack.sh)
#   bash scripts/gpu-session.sh e2e        # the same binaries
#   bash scripts/gpu-session.sh join N     # after carrying .carry/gpu/ort-cuda.partN (N = 1, 2, 3, one per call)
#   bash scripts/gpu-session.sh engine     # the CUDA provider: device-bound I/O, memory, OOM
#   bash scripts/gpu-session.sh e2e-cuda   # the 150 ms target: ich end to end, CUDA provider, GPU kernels
#   bash scripts/gpu-session.sh batching   # batching on and off on the CUDA provider
# Stages after the first reuse what earlier calls unpacked while the
# machine stays warm (30 s after a call); a cold machine needs them again.
set -uo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
stage="${1:?stage: kernels, e2e, join N, engine or batching}"
[ -x bin/gpu/kernels.test ] || xz -dc .carry/gpu/bin.tar.xz | tar xf -
ORT="$PWD/.deps/onnxruntime" # our core library, and the CUDA provider beside it
case "$stage" in
kernels)
  NCU="${NCU:-1}" OUT="$OUT" bash scripts/gpu-verify.sh 2>&1 | tee "$OUT/stage-kernels.log"
  ;;
e2e)
  OUT="$OUT" bash scripts/gpu-e2e.sh 2>&1 | tee "$OUT/stage-e2e.log"
  ;;
join)
  n="${2:?join N}"
  mkdir -p /tmp/voxserve-parts
  cp ".carry/gpu/ort-cuda.part$n" /tmp/voxserve-parts/
  if [ -f /tmp/voxserve-parts/ort-cuda.part1 ] && [ -f /tmp/voxserve-parts/ort-cuda.part2 ] && [ -f /tmp/voxserve-parts/ort-cuda.part3 ]; then
    cat /tmp/voxserve-parts/ort-cuda.part{1,2,3} | xz -d | tar xf - -C "$ORT"
    ls -la "$ORT"
  else
    echo "have: $(ls /tmp/voxserve-parts)"
  fi
  ;;
engine)
  [ -f "$ORT/libonnxruntime_providers_cuda.so" ] || { echo "join the three provider parts first"; exit 1; }
  (cd engine && VOXSERVE_REQUIRE_GPU=1 VOXSERVE_ORT_LIB="$ORT/libonnxruntime.so.1" ../bin/gpu/engine.test \
    -test.run 'Device|CUDA' -test.v -test.timeout 9m) 2>&1 | tee "$OUT/stage-engine.log"
  ;;
e2e-cuda)
  [ -f "$ORT/libonnxruntime_providers_cuda.so" ] || { echo "join the three provider parts first"; exit 1; }
  # ich on the CUDA provider (device-bound I/O by default) with the GPU
  # kernels, on the 512x512 head CT of the e2e stage: DICOM bytes to
  # findings, measurements and the SR, the server's own timings per stage.
  repo=$(mktemp -d)
  cp -r models/ich "$repo/"
  python3 - "$repo/ich/bundle.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("\nprovenance:", "\nexecution:\n  providers: [cuda]\n  cuda: {cudnn_conv_algo_search: HEURISTIC}\nprovenance:", 1)
open(p, "w").write(s)
PY
  CT=/tmp/voxserve-e2e
  [ -d "$CT" ] || bin/cuda/voxctl phantom --kind head-ct --matrix 512 --slice-thickness 0.625 --seed 300001 --out "$CT" --quiet
  study=$(ls -d "$CT"/*/ | head -1)
  # The split per stage (Timings.stages), cold then warm: four requests
  # in one process, the first paying the session's first runs...
  echo "== voxctl, 4 requests in one process" | tee -a "$OUT/stage-e2e-cuda.log"
  bin/cuda/voxctl infer --model ich --model-repository "$repo" --dicom "$study" --gpu on --sr "$OUT/ich.sr.dcm" --repeat 4 \
    --onnxruntime-lib "$ORT/libonnxruntime.so.1" 2>&1 | grep -E "^run|timings|stages|provider|intracranial|volume|warning" | tee -a "$OUT/stage-e2e-cuda.log"
  rm -f "$OUT/ich.sr.dcm"
  # ...and warm latency: the same kind of study (voxbench's phantom, seed
  # 300000) sent again and again to the in-process server, CPU and GPU.
  for g in on off; do
    echo "== voxbench, --gpu $g, CUDA provider" | tee -a "$OUT/stage-e2e-cuda.log"
    VOXSERVE_ORT_LIB="$ORT/libonnxruntime.so.1" bin/cuda/voxbench --model ich --model-repository "$repo" --gpu "$g" \
      --phantom head-ct --phantom-matrix 512 --phantom-slice-mm 0.625 --outputs findings,measurements,sr \
      --concurrency 1 --duration 20s --warmup 5s --quiet 2>&1 | tee -a "$OUT/stage-e2e-cuda.log"
  done
  ;;
batching)
  [ -f "$ORT/libonnxruntime_providers_cuda.so" ] || { echo "join the three provider parts first"; exit 1; }
  tmp=$(mktemp -d)
  for m in pneumothorax ich; do
    cp -r "models/$m" "$tmp/"
    python3 - "$tmp/$m/bundle.yaml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("\nprovenance:", "\nexecution:\n  providers: [cuda]\n  cuda: {cudnn_conv_algo_search: HEURISTIC}\nprovenance:", 1)
open(p, "w").write(s)
PY
    for mode in on off; do
      dir="$tmp/$mode"
      mkdir -p "$dir" && cp -r "$tmp/$m" "$dir/"
      [ "$mode" = off ] && python3 - "$dir/$m/bundle.yaml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
open(p, "w").write(re.sub(r"dynamic_batching:\n(  .*\n)+", "", s))
PY
      echo "== $m, dynamic batching $mode, CUDA provider" | tee -a "$OUT/stage-batching.log"
      VOXSERVE_ORT_LIB="$ORT/libonnxruntime.so.1" bin/cuda/voxbench --model "$m" --model-repository "$dir" \
        --concurrency 1,4,16,32 --duration 8s --warmup 3s --quiet 2>&1 | tee -a "$OUT/stage-batching.log"
    done
  done
  ;;
*)
  echo "unknown stage $stage" >&2
  exit 2
  ;;
esac
