#!/usr/bin/env bash
# Trains the pneumothorax and psoas bundles on a GPU machine (the device
# tool's), with bin/voxctl built beforehand, and copies the results to
# $OUT/<task>/ (model.onnx, bundle.yaml with the picked threshold,
# train_metrics.json, train.log). Same scripts and seeds as `make models`.
set -uo pipefail
OUT="${OUT:-bench/out}"
export PYTHONUNBUFFERED=1 PYTHONPATH=scripts
for task in "$@"; do
  mkdir -p "$OUT/$task"
  timeout "${TRAIN_TIMEOUT:-280}" python3 scripts/train_seg.py --task "$task" 2>&1 | tee "$OUT/$task/train.log" | grep -v "^+" | tail -n 20
  cp "models/$task/1/model.onnx" "models/$task/bundle.yaml" "data/$task/train_metrics.json" "$OUT/$task/" 2>/dev/null
done
