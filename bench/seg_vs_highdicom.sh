#!/usr/bin/env bash
# DICOM SEG writing: voxserve's dicomout.SEG against highdicom, on the same
# 512x512x300 CT series and the same mask (a sphere and a box, one
# segment, every frame kept), in the same run. Prints both and the ratio.
#   bench/seg_vs_highdicom.sh [ROWS COLS SLICES]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s venv >/dev/null
dir=$(mktemp -d)
mask=$(mktemp -d)/mask.npy
trap 'rm -rf "$dir" "$(dirname "$mask")"' EXIT
go run ./scripts/gen-ct-series "$dir" "${1:-512}" "${2:-512}" "${3:-300}"
.venv/bin/python - "$mask" "${3:-300}" "${1:-512}" "${2:-512}" <<'PY'
import sys, numpy as np
z, y, x = (int(v) for v in sys.argv[2:5])
k, j, i = np.ogrid[:z, :y, :x]
m = ((k - z / 2) ** 2 / (z / 6) ** 2 + (j - y / 2) ** 2 / (y / 8) ** 2 + (i - x / 3) ** 2 / (x / 8) ** 2 <= 1)
m[z // 4:z // 3, y // 4:y // 2, x // 2:3 * x // 4] = True
np.save(sys.argv[1], m.astype(np.uint8))
PY
echo "series: $(ls "$dir" | wc -l) files; $(nproc) cores"
py=$(.venv/bin/python bench/highdicom_seg.py "$dir" "$mask" 3)
echo "$py"
go_out=$(VOXSERVE_BENCH_DIR="$dir" VOXSERVE_BENCH_MASK="$mask" go test -run '^$' -bench BenchmarkSEGFromSeries -benchtime 5x -count 1 ./dicomout/)
echo "$go_out" | grep Benchmark
go_ms=$(echo "$go_out" | awk '/BenchmarkSEGFromSeries/ {print $3/1e6}')
py_ms=$(echo "$py" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
echo "voxserve: ${go_ms} ms per SEG; highdicom: ${py_ms} ms median"
echo "ratio: $(python3 -c "print(f'{$py_ms/$go_ms:.1f}')")x faster than highdicom"
