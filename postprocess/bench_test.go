package postprocess

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zlib"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/volume"
)

// headCTMask is a 512 x 512 x 271 label map (a head CT's grid) with one
// 11 mL-sized blob: what Compressed gets for ich.
func headCTMask() *Mask {
	nx, ny, nz := 512, 512, 271
	v := make([]uint8, nx*ny*nz)
	for z := 100; z < 160; z++ {
		for y := 180; y < 260; y++ {
			for x := 200; x < 290; x++ {
				if (x-245)*(x-245)+(y-220)*(y-220)+(z-130)*(z-130)*2 < 1200 {
					v[(z*ny+y)*nx+x] = 1
				}
			}
		}
	}
	return &Mask{Voxels: v, Dims: []int64{int64(nz), int64(ny), int64(nx)}}
}

// BenchmarkMaskCompress compares Compressed (every core) with one zlib
// writer at the same level (the code before), on the same mask.
func BenchmarkMaskCompress(b *testing.B) {
	m := headCTMask()
	b.Run("cores", func(b *testing.B) {
		b.SetBytes(int64(len(m.Voxels)))
		var n int
		for i := 0; i < b.N; i++ {
			n = len(m.Compressed())
		}
		b.ReportMetric(float64(n), "zbytes")
	})
	b.Run("one-writer", func(b *testing.B) {
		b.SetBytes(int64(len(m.Voxels)))
		var n int
		for i := 0; i < b.N; i++ {
			var buf bytes.Buffer
			w, err := zlib.NewWriterLevel(&buf, zlib.BestSpeed)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Write(m.Voxels); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
			n = buf.Len()
		}
		b.ReportMetric(float64(n), "zbytes")
	})
}

// BenchmarkMeasurePsoas takes psoas's eight measurements (volume, length,
// maximal area and mean attenuation per side) on a 512 x 512 x 271 grid.
func BenchmarkMeasurePsoas(b *testing.B) {
	m := headCTMask()
	for i, v := range m.Voxels { // the blob's right half is the other side
		if v == 1 && i%512 >= 245 {
			m.Voxels[i] = 2
		}
	}
	decl := bundle.Output{Name: "mask_logits", Kind: "mask", Labels: []bundle.Label{{Name: "left psoas"}, {Name: "right psoas"}}}
	for _, side := range []string{"left psoas", "right psoas"} {
		for _, ty := range []string{"volume", "craniocaudal_length", "max_axial_area", "mean_intensity"} {
			decl.Measurements = append(decl.Measurements, bundle.MeasurementSpec{Name: ty, Type: ty, Label: side})
		}
	}
	st := &Study{Geometry: volume.Identity(), Stored: make([]int16, len(m.Voxels)), Slope: 1, Intercept: -1024, Modality: "CT"}
	for i := range st.Stored {
		st.Stored[i] = int16(i % 2000)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := measure(decl, m, st); err != nil {
			b.Fatal(err)
		}
	}
}
