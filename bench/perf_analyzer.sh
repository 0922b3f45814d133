#!/usr/bin/env bash
# Triton's perf_analyzer against voxserve's KServe v2 endpoint: a
# concurrency sweep on one model, with perf_analyzer's own client- and
# server-side (ModelStatistics) figures. Fails on any perf_analyzer error.
#   bench/perf_analyzer.sh [MODEL] [CONCURRENCIES] [WINDOW_MS]
# Defaults: pneumothorax, 1,2,4,8,16,32, 3000. Output in ${OUT:-bench/out}.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-pneumothorax}
concs=${2:-1,2,4,8,16,32}
window=${3:-3000}
out=${OUT:-bench/out}
mkdir -p "$out"
scripts/fetch-perf-analyzer.sh .deps/perf_analyzer
grpc=127.0.0.1:18201
http=127.0.0.1:18202
bin/voxserve --model-repository models --grpc-addr "$grpc" --http-addr "$http" --log-level warn &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://$http/readyz" >/dev/null && break; sleep 0.2; done
log="$out/perf_analyzer-$model.txt"
: >"$log"
for c in ${concs//,/ }; do
  .deps/perf_analyzer/run -m "$model" -i grpc -u "$grpc" --concurrency-range "$c:$c" \
    --measurement-interval "$window" --max-trials 20 -f "$out/perf_analyzer-$model-c$c.csv" 2>&1 | tee -a "$log"
done
if grep -qiE "error|failed" "$log"; then
  echo "perf_analyzer reported errors (see $log)" >&2
  exit 1
fi
echo "perf_analyzer: $model swept at concurrency $concs with no errors; output in $log"
