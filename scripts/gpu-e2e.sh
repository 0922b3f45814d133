#!/usr/bin/env bash
# End to end on a GPU machine: a 512x512 head CT phantom with 0.625 mm
# slices through `voxctl infer --model ich` in process, preprocessing on the
# CPU (--gpu off) and on the GPU (--gpu on), two runs each; prints the
# server's own timings. Needs bin/cuda/voxctl (make build-cuda) and an ONNX
# Runtime 1.30 library (ORT_LIB; default: the one in python3's onnxruntime).
set -euo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
V=bin/cuda/voxctl
LIB="${ORT_LIB:-$(python3 -c "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*'))[0])")}"
CT=/tmp/voxserve-e2e
[ -d "$CT" ] || $V phantom --kind head-ct --matrix 512 --slice-thickness 0.625 --seed 300001 --out "$CT" --quiet
study=$(ls -d "$CT"/*/ | head -1)
$V inspect "$study" 2>/dev/null | head -3 | tee "$OUT/e2e.txt"
for g in off on off on; do
  echo "== --gpu $g" | tee -a "$OUT/e2e.txt"
  $V infer --model ich --dicom "$study" --gpu "$g" --onnxruntime-lib "$LIB" 2>&1 | grep -E "timings|stages|intracranial|volume|warning" | tee -a "$OUT/e2e.txt"
done
