package postprocess

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/preprocess"
	"github.com/voxserve/voxserve/volume"
)

// The row-skipping labels of CPULabels equal the full path's (every
// channel mapped, then LabelVoxels and RemoveSmallComponents), voxel for
// voxel: background far below the threshold, blobs, values right at the
// threshold, NaNs, flipped and oblique geometry, both activations.
func TestCPULabelsMatchFullPath(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	model := volume.Geometry{Spacing: [3]float64{1.8, 1.8, 5}, Origin: [3]float64{-100, -110, 20}, Direction: [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}}
	flipped := volume.Geometry{Spacing: [3]float64{0.7, 0.6, 2.5}, Origin: [3]float64{5, -30, 74}, Direction: [9]float64{-1, 0, 0, 0, -1, 0, 0, 0, -1}}
	a := 10 * math.Pi / 180
	oblique := volume.Geometry{Spacing: [3]float64{0.7, 0.7, 2.5}, Origin: [3]float64{-100, -100, 20},
		Direction: [9]float64{math.Cos(a), math.Sin(a), 0, -math.Sin(a), math.Cos(a), 0, 0, 0, 1}}
	axial := volume.Geometry{Spacing: [3]float64{0.7, 0.6, 2.5}, Origin: [3]float64{-95, -105, 22}, Direction: [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}}
	for _, src := range []volume.Geometry{axial, flipped, oblique} {
		for _, tc := range []struct {
			act string
			th  float64
			bg  float32
			c   int
		}{{"sigmoid", 0.5, -12, 1}, {"sigmoid", 0.9, -3, 1}, {"none", 0.5, 0.01, 1}, {"softmax", 0.3, 0, 1},
			{"sigmoid", 0.5, -12, 3}, {"none", 0.4, 0.01, 2}, {"softmax", 0.5, 0, 2}} {
			ch := &preprocess.Channels{C: tc.c, NX: 40, NY: 36, NZ: 9}
			ch.V = make([]float32, tc.c*ch.NX*ch.NY*ch.NZ)
			hi := float32(12)
			if tc.act != "sigmoid" {
				hi = 1
			}
			for i := range ch.V {
				ch.V[i] = tc.bg + float32(rng.NormFloat64())*0.01
			}
			vox := ch.NX * ch.NY * ch.NZ
			for b := 0; b < 4*tc.c; b++ { // blobs above the threshold, in every channel
				x, y, z, c := rng.IntN(ch.NX-6), rng.IntN(ch.NY-6), rng.IntN(ch.NZ-2), b%tc.c
				for k := z; k < z+2; k++ {
					for j := y; j < y+5; j++ {
						for i := x; i < x+5; i++ {
							ch.V[c*vox+(k*ch.NY+j)*ch.NX+i] = hi * float32(rng.Float64())
						}
					}
				}
			}
			xt := float32(tc.th)
			if tc.act == "sigmoid" {
				xt = float32(math.Log(tc.th / (1 - tc.th)))
			}
			for i := 0; i < 20; i++ { // values right at the threshold
				ch.V[rng.IntN(len(ch.V))] = xt
			}
			if tc.act != "none" { // a NaN in some cases: its rows take the full path
				ch.V[rng.IntN(len(ch.V))] = float32(math.NaN())
			}
			size := [3]int{150, 130, 22}
			dims := [3]int{size[2], size[1], size[0]}
			th := make([]float64, tc.c)
			for c := range th {
				th[c] = tc.th
			}
			label := func(v []float32, channels, n int, out []uint8) { LabelVoxels(v, 1, channels, n, tc.act, th, out) }
			for _, minVox := range []int{0, 20} {
				cleanup := func(lab []uint8) { RemoveSmallComponents(lab, dims, minVox) }
				want := preprocess.SourceLabels(ch, model, src, size, label, cleanup)
				got, err := CPULabels{}.SourceLabels(ch, model, src, size, tc.act, th, minVox)
				require.NoError(t, err)
				ones := 0
				for _, v := range want {
					ones += int(v)
				}
				require.Positive(t, ones, "the case labels something")
				assert.Equal(t, want, got, "%s %g x%d min %d", tc.act, tc.th, tc.c, minVox)
			}
		}
	}
}
