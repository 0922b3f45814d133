#!/usr/bin/env bash
# Evaluates each reference bundle through the real server path (DICOM in,
# findings out) on phantoms from seeds never used in training (300000 on),
# writes models/<name>/eval/report.{json,md}, and records the figures in
# the bundle's provenance.metrics.
#   scripts/eval.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
eval_one() { # name kind extra-phantom-flags...
  local name=$1 kind=$2; shift 2
  [ -f "models/$name/bundle.yaml" ] || return 0
  local data="data/eval/$name"
  if [ "$(ls "$data" 2>/dev/null | wc -l)" -lt "$n" ]; then
    bin/voxctl phantom --kind "$kind" --out "$data" --seed 300000 --count "$n" --quiet "$@"
  fi
  bin/voxctl eval --model "$name" --out "models/$name/eval" $(ls -d "$data"/*/ | head -n "$n")
  python3 scripts/update_bundle_metrics.py "models/$name/bundle.yaml" "models/$name/eval/report.json"
}
eval_one ich head-ct --matrix 128 --positive-fraction 0.5
