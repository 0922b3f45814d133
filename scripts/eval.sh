#!/usr/bin/env bash
# Evaluates each reference bundle through the real server path (DICOM in,
# findings out) on phantoms from seeds never used in training (300000 on),
# writes models/<name>/eval/report.{json,md}, and records the figures in
# the bundle's provenance.metrics.
#   scripts/eval.sh [CASES [PSOAS_CASES]]
# psoas studies are 3D abdominal CTs, ten times slower to make and run on
# the CPU than the others: they get their own, smaller count.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
eval_one() { # name kind cases extra-phantom-flags...
  local name=$1 kind=$2 count=$3; shift 3
  [ -f "models/$name/bundle.yaml" ] || return 0
  local data="data/eval/$name"
  if [ "$(ls "$data" 2>/dev/null | wc -l)" -lt "$count" ]; then
    bin/voxctl phantom --kind "$kind" --out "$data" --seed 300000 --count "$count" --quiet "$@"
  fi
  local cases=("$data"/*/)
  bin/voxctl eval --model "$name" --out "models/$name/eval" "${cases[@]:0:$count}"
  python3 scripts/update_bundle_metrics.py "models/$name/bundle.yaml" "models/$name/eval/report.json"
}
eval_one ich head-ct "$n" --matrix 128 --positive-fraction 0.5
eval_one pneumothorax chest-xr "$n" --positive-fraction 0.5
eval_one psoas abdomen-ct "${2:-$(( (n + 1) / 2 ))}"
