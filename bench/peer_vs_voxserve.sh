#!/usr/bin/env bash
# The CPU fallback against the Python peer (PRODUCT.md section 5): voxserve
# and bench/peer/peer_server.py (pydicom + numpy + scipy + onnxruntime behind
# grpcio, the same ich model) serve the same head CT phantom as DICOM to the
# same client, voxbench, over loopback gRPC. Prints each sweep, each
# server's peak resident memory, and the ratios.
#   bench/peer_vs_voxserve.sh [CONCURRENCIES] [DURATION]   (default 1,4 30s)
set -euo pipefail
cd "$(dirname "$0")/.."
concs=${1:-1,4}
dur=${2:-30s}
out=${OUT:-bench/out}
mkdir -p "$out"
make -s venv build >/dev/null
study=(--phantom head-ct --phantom-matrix 512 --phantom-slice-mm 0.625)
bin/voxserve --model-repository models --grpc-addr 127.0.0.1:18501 --http-addr 127.0.0.1:18502 --log-level warn >/dev/null 2>&1 &
vs=$!
.venv/bin/python bench/peer/peer_server.py 127.0.0.1:18503 >/dev/null 2>&1 &
py=$!
trap 'kill $vs $py 2>/dev/null; wait 2>/dev/null || true' EXIT
sleep 5
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
run() { # name addr pid
  bin/voxbench --addr "$2" --model ich "${study[@]}" --concurrency "$concs" --duration "$dur" --warmup 8s --quiet \
    --out "$out/peer-$1" 2>/dev/null | tee "$out/peer-$1.txt"
  echo "$1 peak resident memory: $(hwm "$3") MiB" | tee -a "$out/peer-$1.txt"
}
echo "== voxserve"; run voxserve 127.0.0.1:18501 $vs
echo "== Python peer (pydicom + numpy + scipy + onnxruntime, grpcio)"; run python 127.0.0.1:18503 $py
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
v, p = (json.load(open(f"{out}/peer-{n}/results.json")) for n in ("voxserve", "python"))
def mem(n):
    return float(open(f"{out}/peer-{n}.txt").read().split("memory: ")[1].split()[0])
for a, b in zip(v["steps"], p["steps"]):
    print(f"concurrency {a['concurrency']}: throughput {a['throughput_rps'] / b['throughput_rps']:.1f}x, "
          f"p99 {a['p99_ms']:.0f} vs {b['p99_ms']:.0f} ms ({a['p99_ms'] / b['p99_ms']:.2f}x)")
print(f"peak memory {mem('voxserve'):.0f} vs {mem('python'):.0f} MiB ({mem('voxserve') / mem('python'):.2f}x)")
PY
