#!/usr/bin/env bash
# Verifies the CUDA kernels on a GPU machine and records the figures:
# kernels vs the Go reference on random data, compute-sanitizer (memcheck,
# racecheck), the preprocessing benchmark, and the PyTorch peer.
# Needs bin/gpu/kernels.test (make gpu-test-binaries, built on a machine with
# Go) and, for the peer, python3 with torch. Writes logs under ${OUT:-bench/out}.
set -uo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
T=bin/gpu/kernels.test
export VOXSERVE_REQUIRE_GPU=1

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } 2>&1 | tee "$OUT/device.txt"
echo "== kernels against the Go reference"
$T -test.run 'TestGPU|TestSelect' -test.v -test.count=2 2>&1 | tee "$OUT/verify.log" | grep -E "^(---|=== RUN|ok|FAIL|PASS)|seed|free|Error" | grep -v "=== RUN" | head -60
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool"
    timeout 100 compute-sanitizer --tool $tool --error-exitcode 3 $T -test.run 'TestGPUMatchesCPU|TestGPUPrepareSlabs|TestGPUPreparePatches|TestGPUSourceLabelsResident|TestGPUHost' -test.short \
      >"$OUT/sanitizer-$tool.log" 2>&1
    echo "exit $? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer-$tool.log") clean summaries)"; tail -2 "$OUT/sanitizer-$tool.log"
  done
fi
echo "== benchmarks"
# The device's figures 100 times each; the CPU reference (about 0.2 s a
# pass on 16 cores) 5 times, which is enough for the ratio.
$T -test.run '^$' -test.bench 'GPUPreprocess' -test.benchtime 100x -test.count 3 2>&1 | tee "$OUT/bench.txt" | grep -E "Benchmark|ok"
$T -test.run '^$' -test.bench 'CPUPreprocess3$' -test.benchtime 5x -test.count 1 2>&1 | tee -a "$OUT/bench.txt" | grep -E "Benchmark|ok"
if command -v ncu >/dev/null && [ -n "${NCU:-}" ]; then
  echo "== ncu, fused preprocessing kernel"
  timeout 180 ncu --clock-control none --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis \
    -k regex:vox_window -c 1 $T -test.run '^$' -test.bench 'GPUPreprocess3$' -test.benchtime 1x >"$OUT/ncu.txt" 2>&1
  grep -E "Throughput|Duration|Achieved Occupancy|Registers|Local" "$OUT/ncu.txt" | head -20
fi
echo "== PyTorch peer"
python3 bench/gpu_preprocess_torch.py 2>&1 | tee "$OUT/torch.jsonl"
