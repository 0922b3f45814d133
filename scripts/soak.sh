#!/usr/bin/env bash
# Soak: a real voxserve under steady load for DURATION (default 10m),
# sampling its goroutines and resident memory from /metrics every 30 s;
# fails if either grows past the first sample taken after warm-up by more
# than 20 % (goroutines) or 25 % (memory). Writes the samples to
# ${OUT:-bench/out}/soak.csv.
#   scripts/soak.sh [DURATION] [MODEL] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10m}
model=${2:-pneumothorax}
conc=${3:-8}
out=${OUT:-bench/out}
mkdir -p "$out"
grpc=127.0.0.1:18101
http=127.0.0.1:18102
bin/voxserve --model-repository models --grpc-addr "$grpc" --http-addr "$http" --log-level warn &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://$http/readyz" >/dev/null && break; sleep 0.2; done

metric() { curl -sf "http://$http/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
bin/voxbench --addr "$grpc" --model "$model" --concurrency "$conc" --duration "$dur" --warmup 20s >"$out/soak-voxbench.txt" 2>/dev/null &
bench=$!
sleep 25 # past the warm-up
echo "seconds,goroutines,resident_bytes" >"$out/soak.csv"
start=$(date +%s)
while kill -0 $bench 2>/dev/null; do
  echo "$(( $(date +%s) - start )),$(metric go_goroutines),$(metric process_resident_memory_bytes)" >>"$out/soak.csv"
  sleep 30
done
wait $bench
cat "$out/soak-voxbench.txt"
python3 - "$out/soak.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["goroutines"] and r["resident_bytes"]]
if len(rows) < 2:
    sys.exit("soak: too few samples; run longer")
g0, m0 = float(rows[0]["goroutines"]), float(rows[0]["resident_bytes"])
g1, m1 = max(float(r["goroutines"]) for r in rows[1:]), max(float(r["resident_bytes"]) for r in rows[1:])
print(f"soak: {len(rows)} samples; goroutines {g0:.0f} -> max {g1:.0f}; resident {m0/2**20:.0f} -> max {m1/2**20:.0f} MiB")
bad = []
if g1 > 1.2 * g0:
    bad.append("goroutines grew by more than 20 %")
if m1 > 1.25 * m0:
    bad.append("resident memory grew by more than 25 %")
sys.exit("soak: " + "; ".join(bad) if bad else 0)
PY
