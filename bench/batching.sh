#!/usr/bin/env bash
# Dynamic batching on against off, same model, same inputs, same run:
# voxbench closed-loop sweeps over a reference bundle at the tensor level
# (one model input item per request: a radiograph, a slab), once as shipped
# (dynamic_batching on) and once with the dynamic_batching block removed.
#   MODEL=pneumothorax bench/batching.sh [CONCURRENCY] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-pneumothorax}
conc=${1:-1,4,16,32}
dur=${2:-8s}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for mode in on off; do
  mkdir -p "$tmp/$mode"
  cp -r "models/$model" "$tmp/$mode/"
  if [ "$mode" = off ]; then
    python3 - "$tmp/$mode/$model/bundle.yaml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r"dynamic_batching:\n(  .*\n)+", "", s)
open(p, "w").write(s)
PY
  fi
  echo "== dynamic batching $mode"
  ${VOXBENCH:-bin/voxbench} --model "$model" --model-repository "$tmp/$mode" --concurrency "$conc" \
    --duration "$dur" --warmup 2s --out "$tmp/out-$mode" | tee "$tmp/$mode.txt"
done
