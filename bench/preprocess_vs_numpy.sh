#!/usr/bin/env bash
# The CPU preprocessing chain (512x512x300 CT -> 1 mm isotropic, brain
# window, float32) in voxserve's Go reference and in numpy + scipy, in the
# same run. Prints both and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s venv >/dev/null
echo "$(nproc) cores"
py=$(.venv/bin/python bench/numpy_preprocess.py 3)
echo "$py"
go_out=$(go test -run '^$' -bench BenchmarkPrepareCT -benchtime 3x -count 1 ./preprocess/)
echo "$go_out" | grep Benchmark
go_ms=$(echo "$go_out" | awk '/BenchmarkPrepareCT/ {print $3/1e6}')
py_ms=$(echo "$py" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
py_min=$(echo "$py" | sed -E 's/.*\(min ([0-9.]+)\).*/\1/')
echo "voxserve (Go, CPU): ${go_ms} ms; numpy+scipy: ${py_ms} ms median, ${py_min} ms best"
echo "ratio: $(python3 -c "print(f'{$py_ms/$go_ms:.1f}')")x faster than the median, $(python3 -c "print(f'{$py_min/$go_ms:.1f}')")x than the best run"
