package postprocess

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/phantom"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// oneHot turns a label map into a [1, C, z, y, x] "probability" output, as
// a perfect model would give it.
func oneHot(lab []uint8, dims [3]int, channels int) *tensor.Tensor {
	n := len(lab)
	v := make([]float32, channels*n)
	for i, l := range lab {
		if l > 0 && int(l) <= channels {
			v[(int(l)-1)*n+i] = 1
		}
	}
	return tensor.FromFloat32("mask", []int64{1, int64(channels), int64(dims[0]), int64(dims[1]), int64(dims[2])}, v)
}

func geometry(tr phantom.Truth) volume.Geometry {
	return volume.Geometry{Spacing: tr.Spacing, Origin: tr.Origin, Direction: tr.Direction}
}

func truthValue(t *testing.T, tr phantom.Truth, label, name string) float64 {
	for _, m := range tr.Measurements {
		if m.Label == label && m.Name == name {
			return m.Value
		}
	}
	t.Fatalf("no truth %s/%s", label, name)
	return 0
}

// Measurements on a perfect mask reproduce the phantom's ground truth.
func TestMeasurementsOnPhantoms(t *testing.T) {
	t.Run("psoas", func(t *testing.T) {
		c, err := phantom.Generate(phantom.AbdomenCT, phantom.Options{Seed: 5, Matrix: 128, SliceThickness: 2.5})
		require.NoError(t, err)
		tr := c.Truth
		var ms []bundle.MeasurementSpec
		for _, side := range []string{"left psoas", "right psoas"} {
			for _, typ := range []string{"volume", "craniocaudal_length", "max_axial_area", "mean_intensity"} {
				ms = append(ms, bundle.MeasurementSpec{Name: typ, Type: typ, Label: side})
			}
		}
		out := bundle.Output{Name: "mask", Kind: "mask", Activation: "none", MinComponentMM3: 50,
			Labels: []bundle.Label{{Name: "left psoas", Threshold: 0.5}, {Name: "right psoas", Threshold: 0.5}}, Measurements: ms}
		hu := make([]float32, len(c.Labels))
		plane := tr.Dims[1] * tr.Dims[2]
		for i := range hu {
			hu[i] = float32(c.Series.Value(i%tr.Dims[2], (i/tr.Dims[2])%tr.Dims[1], i/plane)) - 1024
		}
		res, err := Run(spec(out), []*tensor.Tensor{oneHot(c.Labels, tr.Dims, 2)}, true, &Study{Geometry: geometry(tr), Values: hu, Modality: "CT"})
		require.NoError(t, err)
		// The same study kept as int16 stored values with their rescale
		// (a volume decoded for the GPU) measures the same, exactly.
		stored := make([]int16, len(hu))
		for i := range stored {
			stored[i] = int16(c.Series.Value(i%tr.Dims[2], (i/tr.Dims[2])%tr.Dims[1], i/plane))
		}
		res16, err := Run(spec(out), []*tensor.Tensor{oneHot(c.Labels, tr.Dims, 2)}, true,
			&Study{Geometry: geometry(tr), Stored: stored, Slope: 1, Intercept: -1024, Modality: "CT"})
		require.NoError(t, err)
		assert.Equal(t, res.Measurements, res16.Measurements)
		got := map[string]Measurement{}
		for _, m := range res.Measurements {
			got[m.Label+"/"+m.Name] = m
		}
		for _, side := range []string{"left psoas", "right psoas"} {
			assert.InEpsilon(t, truthValue(t, tr, side, "volume"), got[side+"/volume"].Value, 0.08)
			assert.Equal(t, "mL", got[side+"/volume"].Unit)
			assert.InDelta(t, truthValue(t, tr, side, "craniocaudal length"), got[side+"/craniocaudal_length"].Value, 0.6)
			assert.Equal(t, "cm", got[side+"/craniocaudal_length"].Unit)
			assert.InEpsilon(t, truthValue(t, tr, side, "maximal cross-sectional area"), got[side+"/max_axial_area"].Value, 0.15)
			assert.Equal(t, "cm2", got[side+"/max_axial_area"].Unit)
			assert.InDelta(t, truthValue(t, tr, side, "mean attenuation"), got[side+"/mean_intensity"].Value, 8)
			assert.Equal(t, "[hnsf'U]", got[side+"/mean_intensity"].Unit)
		}
	})
	t.Run("pneumothorax", func(t *testing.T) {
		yes := true
		for seed := uint64(1); seed <= 4; seed++ {
			c, err := phantom.Generate(phantom.ChestXR, phantom.Options{Seed: seed, Positive: &yes, Matrix: 192})
			require.NoError(t, err)
			out := bundle.Output{Name: "mask", Kind: "mask", Activation: "none",
				Labels:       []bundle.Label{{Name: "pneumothorax", Threshold: 0.5}, {Name: "right lung", Threshold: 0.5}, {Name: "left lung", Threshold: 0.5}},
				Measurements: []bundle.MeasurementSpec{{Name: "pneumothorax fraction", Type: "side_fraction", Label: "pneumothorax", Right: "right lung", Left: "left lung"}}}
			res, err := Run(spec(out), []*tensor.Tensor{oneHot(c.Labels, c.Truth.Dims, 3)}, true, &Study{Geometry: geometry(c.Truth)})
			require.NoError(t, err)
			assert.InDelta(t, c.Truth.Measurements[0].Value, res.Measurements[0].Value, 0.02, "seed %d", seed)
		}
	})
	t.Run("hemorrhage", func(t *testing.T) {
		yes := true
		c, err := phantom.Generate(phantom.HeadCT, phantom.Options{Seed: 11, Positive: &yes, Matrix: 96, SliceThickness: 2.5})
		require.NoError(t, err)
		out := bundle.Output{Name: "mask", Kind: "mask", Activation: "none", Labels: []bundle.Label{{Name: "hemorrhage", Threshold: 0.5}},
			Measurements: []bundle.MeasurementSpec{{Name: "hemorrhage volume", Type: "volume", Label: "hemorrhage"}}}
		res, err := Run(spec(out), []*tensor.Tensor{oneHot(c.Labels, c.Truth.Dims, 1)}, true, &Study{Geometry: geometry(c.Truth)})
		require.NoError(t, err)
		assert.InEpsilon(t, c.Truth.Measurements[0].Value, res.Measurements[0].Value, 0.35)
	})
}

func TestRemoveSmallComponents(t *testing.T) {
	// 1 x 4 x 6: a 4-voxel blob, a lone speck, and a diagonal pair (26-connected).
	lab := []uint8{
		1, 1, 0, 0, 0, 1,
		1, 1, 0, 0, 0, 0,
		0, 0, 0, 2, 0, 0,
		0, 0, 0, 0, 2, 0,
	}
	removed := RemoveSmallComponents(lab, [3]int{1, 4, 6}, 2)
	assert.Equal(t, 1, removed)
	assert.Equal(t, uint8(0), lab[5])
	assert.Equal(t, uint8(2), lab[15])
	assert.Equal(t, uint8(2), lab[22])
	assert.Equal(t, 6, count(lab, 1)+count(lab, 2))
	assert.Zero(t, RemoveSmallComponents(lab, [3]int{1, 4, 6}, 1))
}

func TestMeasurementErrors(t *testing.T) {
	out := bundle.Output{Name: "m", Kind: "mask", Labels: []bundle.Label{{Name: "a", Threshold: 0.5}},
		Measurements: []bundle.MeasurementSpec{{Name: "x", Type: "mean_intensity", Label: "a"}}}
	mask := tensor.FromFloat32("m", []int64{1, 1, 2, 2}, []float32{1, 0, 0, 1})
	_, err := Run(spec(out), []*tensor.Tensor{mask}, true, &Study{Geometry: volume.Identity()})
	assert.ErrorContains(t, err, "needs the source values")
	res, err := Run(spec(out), []*tensor.Tensor{mask}, true, nil)
	require.NoError(t, err)
	assert.Contains(t, res.Warnings[0], "measurements need a volume or DICOM input")
	res, err = Run(spec(out), []*tensor.Tensor{mask}, true, &Study{Geometry: volume.Identity(), Values: []float32{10, 99, 99, 20}})
	require.NoError(t, err)
	assert.InDelta(t, 15, res.Measurements[0].Value, 1e-9)
	assert.False(t, math.IsNaN(res.Measurements[0].Value))
}

// Run itself answers an empty study negative: the mask the model made of
// it is cleared and its measurements are 0, with a warning.
func TestRunEmptyStudyIsNegative(t *testing.T) {
	out := bundle.Output{Name: "m", Kind: "mask", Labels: []bundle.Label{{Name: "a", Threshold: 0.5}},
		Measurements: []bundle.MeasurementSpec{{Name: "x", Type: "mean_intensity", Label: "a"}}}
	mask := tensor.FromFloat32("m", []int64{1, 1, 2, 2}, []float32{1, 0, 0, 1})
	for _, st := range []*Study{
		{Geometry: volume.Identity(), Values: []float32{70, 70, 70, 70}, Modality: "CT"},
		{Geometry: volume.Identity(), Stored: []int16{35, 35, 35, 35}, Slope: 2, Modality: "CT"},
		{Geometry: volume.Identity(), Stored: []int16{0, 100, 50, 24}, Slope: 1, Intercept: -1024, Modality: "CT"}, // all air
	} {
		res, err := Run(spec(out), []*tensor.Tensor{mask}, true, st)
		require.NoError(t, err)
		assert.Zero(t, res.Measurements[0].Value)
		assert.Equal(t, []uint8{0, 0, 0, 0}, res.Masks[0].Voxels)
		assert.Contains(t, res.Warnings[len(res.Warnings)-1], "nothing to find")
	}
	res, err := Run(spec(out), []*tensor.Tensor{mask}, true, &Study{Geometry: volume.Identity(), Stored: []int16{10, 99, 99, 20}, Slope: 2, Intercept: 1, Modality: "CT"})
	require.NoError(t, err)
	assert.InDelta(t, 31, res.Measurements[0].Value, 1e-9, "(21 + 41) / 2")
}

// removeSmallReference is the plain flood fill RemoveSmallComponents
// started as, without its skips and bitset: what the fast one must equal.
func removeSmallReference(lab []uint8, dims [3]int, minVoxels int) int {
	nx, ny, nz := dims[2], dims[1], dims[0]
	seen := make([]bool, len(lab))
	removed := 0
	for start, l := range lab {
		if l == 0 || seen[start] {
			continue
		}
		stack, comp := []int{start}, []int{}
		seen[start] = true
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			comp = append(comp, v)
			x, y, z := v%nx, (v/nx)%ny, v/(nx*ny)
			for dz := -1; dz <= 1; dz++ {
				for dy := -1; dy <= 1; dy++ {
					for dx := -1; dx <= 1; dx++ {
						xx, yy, zz := x+dx, y+dy, z+dz
						if xx < 0 || yy < 0 || zz < 0 || xx >= nx || yy >= ny || zz >= nz {
							continue
						}
						if w := (zz*ny+yy)*nx + xx; !seen[w] && lab[w] == l {
							seen[w] = true
							stack = append(stack, w)
						}
					}
				}
			}
		}
		if len(comp) < minVoxels {
			for _, v := range comp {
				lab[v] = 0
			}
			removed++
		}
	}
	return removed
}

func TestRemoveSmallComponentsMatchesFloodFill(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, dims := range [][3]int{{7, 13, 11}, {1, 37, 29}, {9, 16, 16}, {3, 5, 3}} {
		for _, density := range []float64{0.001, 0.05, 0.4} {
			n := dims[0] * dims[1] * dims[2]
			lab := make([]uint8, n)
			for i := range lab {
				if rng.Float64() < density {
					lab[i] = uint8(1 + rng.IntN(3))
				}
			}
			want := append([]uint8(nil), lab...)
			got := append([]uint8(nil), lab...)
			wr := removeSmallReference(want, dims, 4)
			gr := RemoveSmallComponents(got, dims, 4)
			assert.Equal(t, wr, gr, "dims %v density %g", dims, density)
			assert.Equal(t, want, got, "dims %v density %g", dims, density)
			assert.Equal(t, count(want, 2), countReference(want, 2))
		}
	}
}

func countReference(v []uint8, l uint8) int {
	n := 0
	for _, x := range v {
		if x == l {
			n++
		}
	}
	return n
}

// The empty-study check over int16 stored values says what it says over
// the values they stand for, whatever the rescale's sign.
func TestEmptyStoredMatchesValues(t *testing.T) {
	air := make([]int16, 5000)
	late := append(append([]int16{}, air...), 1500)
	for _, tc := range []struct {
		stored           []int16
		slope, intercept float32
		modality         string
	}{
		{[]int16{7, 7, 7}, 1, -1024, "CT"},
		{air, 1, -1024, "CT"},
		{late, 1, -1024, "CT"},
		{late, -1, 0, "CT"},
		{[]int16{0, 100, 50}, 1, -1024, "CT"},
		{[]int16{0, 100, 50}, 1, -1024, "MR"},
		{[]int16{3, -3}, 0.5, 10, "CT"},
	} {
		values := make([]float32, len(tc.stored))
		for i, s := range tc.stored {
			values[i] = float32(s)*tc.slope + tc.intercept
		}
		st := &Study{Stored: tc.stored, Slope: tc.slope, Intercept: tc.intercept, Modality: tc.modality}
		assert.Equal(t, EmptyStudy(values, tc.modality), st.Empty(), "%+v", tc)
	}
}
