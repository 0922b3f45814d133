package postprocess

import (
	"math"
	"math/rand/v2"
	"runtime"
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
	assert.Equal(t, 6, countReference(lab, 1)+countReference(lab, 2))
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

// measureReference is measure as it was, one pass per measurement: the
// reference for the one-pass gather.
func measureReference(decl bundle.Output, m *Mask, st *Study) []float64 {
	dims := maskDims(m)
	nx, ny, nz := dims[2], dims[1], dims[0]
	g, d := st.Geometry, st.Geometry.Direction
	label := func(name string) uint8 {
		for i, l := range decl.Labels {
			if l.Name == name {
				return uint8(i + 1)
			}
		}
		return 0
	}
	var out []float64
	for _, ms := range decl.Measurements {
		lab := label(ms.Label)
		var v float64
		switch ms.Type {
		case "volume":
			v = float64(countReference(m.Voxels, lab)) * g.Spacing[0] * g.Spacing[1] * g.Spacing[2] / 1000
		case "max_axial_area":
			best := 0
			for k := 0; k < nz; k++ {
				best = max(best, countReference(m.Voxels[k*nx*ny:(k+1)*nx*ny], lab))
			}
			v = float64(best) * g.Spacing[0] * g.Spacing[1] / 100
		case "craniocaudal_length":
			lo, hi := math.Inf(1), math.Inf(-1)
			for k := 0; k < nz; k++ {
				for j := 0; j < ny; j++ {
					for i := 0; i < nx; i++ {
						if m.Voxels[(k*ny+j)*nx+i] == lab {
							s := g.Origin[2] + float64(i)*g.Spacing[0]*d[2] + float64(j)*g.Spacing[1]*d[5] + float64(k)*g.Spacing[2]*d[8]
							lo, hi = math.Min(lo, s), math.Max(hi, s)
						}
					}
				}
			}
			if hi >= lo {
				ext := g.Spacing[0]*math.Abs(d[2]) + g.Spacing[1]*math.Abs(d[5]) + g.Spacing[2]*math.Abs(d[8])
				v = (hi - lo + ext) / 10
			}
		case "mean_intensity":
			sum, n := 0.0, 0
			for i, l := range m.Voxels {
				if l == lab {
					sum += float64(st.value(i))
					n++
				}
			}
			if n > 0 {
				v = sum / float64(n)
			}
		case "side_fraction":
			var c [3][3]float64
			for i, l := range m.Voxels {
				for s, want := range []uint8{lab, label(ms.Right), label(ms.Left)} {
					if l == want {
						c[s][0] += float64(i % nx)
						c[s][1] += float64((i / nx) % ny)
						c[s][2]++
					}
				}
			}
			if c[0][2] > 0 {
				cen := func(s int) (float64, float64) { return c[s][0] / math.Max(c[s][2], 1), c[s][1] / math.Max(c[s][2], 1) }
				x0, y0 := cen(0)
				rx, ry := cen(1)
				lx, ly := cen(2)
				side := c[1][2]
				if c[2][2] > 0 && (c[1][2] == 0 || math.Hypot(x0-lx, y0-ly) < math.Hypot(x0-rx, y0-ry)) {
					side = c[2][2]
				}
				v = c[0][2] / (c[0][2] + side)
			}
		}
		out = append(out, v)
	}
	return out
}

// One pass over the label map gives every measurement type what a pass
// per measurement gave, on random maps and oblique geometry, from float32
// and int16 values; the result does not depend on the number of cores.
func TestMeasureMatchesOnePassPerMeasurement(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	decl := bundle.Output{Name: "m", Kind: "mask", Labels: []bundle.Label{{Name: "a"}, {Name: "b"}, {Name: "c"}}}
	for _, l := range []string{"a", "b"} {
		for _, ty := range []string{"volume", "max_axial_area", "craniocaudal_length", "mean_intensity"} {
			decl.Measurements = append(decl.Measurements, bundle.MeasurementSpec{Name: ty, Type: ty, Label: l})
		}
	}
	decl.Measurements = append(decl.Measurements, bundle.MeasurementSpec{Name: "f", Type: "side_fraction", Label: "a", Right: "b", Left: "c"})
	for _, dims := range [][3]int{{9, 31, 27}, {1, 40, 33}, {17, 8, 64}} {
		n := dims[0] * dims[1] * dims[2]
		m := &Mask{Voxels: make([]uint8, n), Dims: []int64{int64(dims[0]), int64(dims[1]), int64(dims[2])}}
		for i := range m.Voxels {
			if rng.Float64() < 0.1 {
				m.Voxels[i] = uint8(1 + rng.IntN(4)) // 4: not a declared label
			}
		}
		g := volume.Identity()
		g.Spacing = [3]float64{0.7, 0.8, 2.5}
		g.Origin = [3]float64{-10, 20, -300}
		g.Direction = [9]float64{1, 0, 0, 0, 0.8, 0.6, 0, -0.6, 0.8}
		stored := make([]int16, n)
		values := make([]float32, n)
		for i := range stored {
			stored[i] = int16(rng.IntN(3000))
			values[i] = float32(stored[i])*0.5 - 1024
		}
		for _, st := range []*Study{
			{Geometry: g, Values: values, Modality: "CT"},
			{Geometry: g, Stored: stored, Slope: 0.5, Intercept: -1024, Modality: "CT"},
		} {
			want := measureReference(decl, m, st)
			got, err := measure(decl, m, st)
			require.NoError(t, err)
			require.Len(t, got, len(want))
			for i, x := range got {
				if decl.Measurements[i].Type == "mean_intensity" {
					assert.InDelta(t, want[i], x.Value, 1e-9*(1+math.Abs(want[i])), "%s of %s, dims %v", x.Name, x.Label, dims)
				} else {
					assert.Equal(t, want[i], x.Value, "%s of %s, dims %v", x.Name, x.Label, dims)
				}
			}
			prev := runtime.GOMAXPROCS(1)
			one, err := measure(decl, m, st)
			runtime.GOMAXPROCS(prev)
			require.NoError(t, err)
			assert.Equal(t, got, one, "the same on one core")
		}
	}
}
