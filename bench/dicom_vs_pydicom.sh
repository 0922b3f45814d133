#!/usr/bin/env bash
# DICOM parsing and series assembly: voxserve against pydicom + numpy, on
# the same 512x512x300 CT series, in the same run. Prints both and the ratio.
#   bench/dicom_vs_pydicom.sh [ROWS COLS SLICES]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s venv >/dev/null
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go run ./scripts/gen-ct-series "$dir" "${1:-512}" "${2:-512}" "${3:-300}"
echo "series: $(ls "$dir" | wc -l) files, $(du -sh "$dir" | cut -f1) in $dir; $(nproc) cores"
py=$(.venv/bin/python bench/pydicom_read.py "$dir" 5)
echo "$py"
go_out=$(VOXSERVE_BENCH_DIR="$dir" go test -run '^$' -bench BenchmarkReadStudy -benchtime 5x -count 1 ./dicom/)
echo "$go_out" | grep Benchmark
go_ms=$(echo "$go_out" | awk '/BenchmarkReadStudy/ {print $3/1e6}')
py_ms=$(echo "$py" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
py_min=$(echo "$py" | sed -E 's/.*\(min ([0-9.]+)\).*/\1/')
echo "voxserve: ${go_ms} ms per series; pydicom+numpy: ${py_ms} ms median, ${py_min} ms best"
echo "ratio: $(python3 -c "print(f'{$py_ms/$go_ms:.1f}')")x faster than pydicom's median, $(python3 -c "print(f'{$py_min/$go_ms:.1f}')")x than its best run"
