package preprocess

import (
	"testing"

	"github.com/voxserve/voxserve/volume"
)

// benchCT is a 512x512x300 head-CT-like float32 volume at 0.45 x 0.45 x
// 0.625 mm (the same formula as bench/numpy_preprocess.py).
func benchCT() *volume.Volume {
	const nx, ny, nz = 512, 512, 300
	g := grid(nx, ny, nz, [3]float64{0.45, 0.45, 0.625}, func(i, j, k int) float32 {
		return float32((i*7+j*13+k*3)%2000) - 1000
	})
	return &volume.Volume{Dims: [3]int64{nz, ny, nx}, Geometry: g.Geometry, Voxels: *tensorOf(g.V, []int64{nz, ny, nx})}
}

// BenchmarkPrepareCT is the reference chain of PRODUCT.md section 5:
// 512x512x300 CT to 1 mm isotropic, brain window, float32 model input.
func BenchmarkPrepareCT(b *testing.B) {
	v := benchCT()
	spec := Spec{TargetSpacing: [3]float64{1, 1, 1}, Windows: []Window{{Center: 40, Width: 80}}, Layout: LayoutVolume}
	b.SetBytes(int64(len(v.Voxels.Data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Prepare(v, spec, "image"); err != nil {
			b.Fatal(err)
		}
	}
}
