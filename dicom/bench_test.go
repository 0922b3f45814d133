package dicom

import (
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// BenchmarkReadStudy reads and assembles the series in $VOXSERVE_BENCH_DIR
// (bench/dicom_vs_pydicom.sh writes a 512x512x300 CT there) from bytes in
// memory into a float32 HU volume: parse, decode, sort, rescale.
func BenchmarkReadStudy(b *testing.B) {
	dir := os.Getenv("VOXSERVE_BENCH_DIR")
	if dir == "" {
		b.Skip("set VOXSERVE_BENCH_DIR to a series folder (bench/dicom_vs_pydicom.sh does)")
	}
	paths, _ := filepath.Glob(filepath.Join(dir, "*.dcm"))
	sort.Strings(paths)
	inputs := make([]Input, len(paths))
	var total int64
	for i, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		inputs[i] = Input{Source: filepath.Base(p), Data: data}
		total += int64(len(data))
	}
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		series, _, err := ReadStudy(inputs, Options{})
		if err != nil || len(series) != 1 {
			b.Fatal(err)
		}
	}
}
