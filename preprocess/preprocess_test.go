package preprocess

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

func grid(nx, ny, nz int, spacing [3]float64, f func(i, j, k int) float32) *Grid {
	g := &Grid{NX: nx, NY: ny, NZ: nz, Geometry: volume.Identity()}
	g.Geometry.Spacing = spacing
	g.V = make([]float32, nx*ny*nz)
	for k := 0; k < nz; k++ {
		for j := 0; j < ny; j++ {
			for i := 0; i < nx; i++ {
				g.V[(k*ny+j)*nx+i] = f(i, j, k)
			}
		}
	}
	return g
}

func TestWindowsGolden(t *testing.T) {
	brain := Window{Name: "brain", Center: 40, Width: 80}
	subdural := Window{Name: "subdural", Center: 80, Width: 200}
	bone := Window{Name: "bone", Center: 600, Width: 2800}
	hu := []float32{-1000, 0, 40, 60, 80, 100, 1000, 2000}
	g := &Grid{NX: len(hu), NY: 1, NZ: 1, Geometry: volume.Identity(), V: hu}
	out := make([]float32, 3*len(hu))
	Windows(g, []Window{brain, subdural, bone}, out)
	want := []float32{
		0, 0, 0.5, 0.75, 1, 1, 1, 1, // brain 0..80
		0, 0.1, 0.3, 0.4, 0.5, 0.6, 1, 1, // subdural -20..180
		0, 800.0 / 2800, 840.0 / 2800, 860.0 / 2800, 880.0 / 2800, 900.0 / 2800, 1800.0 / 2800, 1, // bone -800..2000
	}
	for i := range want {
		assert.InDelta(t, want[i], out[i], 1e-6, "value %d", i)
	}
	assert.Equal(t, float32(0.5), brain.Apply(40))
}

func TestClipScaleAndZScore(t *testing.T) {
	v := []float32{-2000, -1000, 0, 1000, 3000}
	ClipScale(v, -1000, 1000, 0, 1)
	assert.Equal(t, []float32{0, 0, 0.5, 1, 1}, v)
	z := []float32{1, 2, 3, 4}
	mean, std := ZScore(z)
	assert.InDelta(t, 2.5, mean, 1e-12)
	assert.InDelta(t, math.Sqrt(1.25), std, 1e-12)
	assert.InDelta(t, -1.5/math.Sqrt(1.25), z[0], 1e-6)
	c := []float32{7, 7}
	ZScore(c)
	assert.Equal(t, []float32{0, 0}, c)
}

func TestResampleGolden(t *testing.T) {
	g := grid(3, 1, 1, [3]float64{1, 1, 1}, func(i, j, k int) float32 { return float32(10 * i) })
	lin := Resample(g, [3]float64{0.5, 0, 0}, [3]int{ResampleSize(3, 1, 0.5), 1, 1}, Linear)
	assert.Equal(t, 6, lin.NX)
	assert.Equal(t, []float32{0, 5, 10, 15, 20, 20}, lin.V)
	assert.Equal(t, [3]float64{0.5, 1, 1}, lin.Geometry.Spacing)
	near := Resample(g, [3]float64{0.5, 0, 0}, [3]int{6, 1, 1}, Nearest)
	assert.Equal(t, []float32{0, 10, 10, 20, 20, 20}, near.V)
	down := Resample(g, [3]float64{2, 0, 0}, [3]int{2, 1, 1}, Linear)
	assert.Equal(t, []float32{0, 20}, down.V)
}

// Trilinear interpolation reproduces a linear function of position exactly.
func TestResampleLinearFieldIsExact(t *testing.T) {
	sp := [3]float64{0.7, 0.9, 2.5}
	f := func(x, y, z float64) float64 { return 2*x + 3*y - z + 5 }
	g := grid(20, 18, 9, sp, func(i, j, k int) float32 {
		return float32(f(float64(i)*sp[0], float64(j)*sp[1], float64(k)*sp[2]))
	})
	to := [3]float64{1, 1, 1}
	size := [3]int{ResampleSize(20, sp[0], 1), ResampleSize(18, sp[1], 1), ResampleSize(9, sp[2], 1)}
	out := Resample(g, to, size, Linear)
	for k := 0; k < out.NZ; k++ {
		for j := 0; j < out.NY; j++ {
			for i := 0; i < out.NX; i++ {
				x, y, z := float64(i), float64(j), float64(k)
				if x > 19*sp[0] || y > 17*sp[1] || z > 8*sp[2] {
					continue // beyond the last source voxel: edge value
				}
				require.InDelta(t, f(x, y, z), out.V[(k*out.NY+j)*out.NX+i], 1e-3, "voxel %d,%d,%d", i, j, k)
			}
		}
	}
}

func position(g *Grid, i, j, k int) [3]float64 {
	var p [3]float64
	idx := [3]int{i, j, k}
	for c := 0; c < 3; c++ {
		p[c] = g.Geometry.Origin[c]
		for a := 0; a < 3; a++ {
			p[c] += float64(idx[a]) * g.Geometry.Spacing[a] * g.Geometry.Direction[3*a+c]
		}
	}
	return p
}

func TestReorientPreservesPositions(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	g := grid(4, 3, 5, [3]float64{0.5, 0.8, 2}, func(i, j, k int) float32 { return rng.Float32() })
	// x runs right-to-left (-L), y runs superior (+S), z runs anterior (-P).
	g.Geometry.Direction = [9]float64{-1, 0, 0, 0, 0, 1, 0, -1, 0}
	g.Geometry.Origin = [3]float64{10, 20, 30}
	out, err := Reorient(g)
	require.NoError(t, err)
	assert.Equal(t, [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}, out.Geometry.Direction)
	assert.Equal(t, [3]float64{0.5, 2, 0.8}, out.Geometry.Spacing)
	assert.Equal(t, [3]int{4, 5, 3}, [3]int{out.NX, out.NY, out.NZ})
	// Every output voxel holds the input voxel at the same position.
	pos := map[[3]int64]float32{}
	key := func(p [3]float64) [3]int64 {
		return [3]int64{int64(math.Round(p[0] * 1000)), int64(math.Round(p[1] * 1000)), int64(math.Round(p[2] * 1000))}
	}
	for k := 0; k < g.NZ; k++ {
		for j := 0; j < g.NY; j++ {
			for i := 0; i < g.NX; i++ {
				pos[key(position(g, i, j, k))] = g.at(i, j, k)
			}
		}
	}
	for k := 0; k < out.NZ; k++ {
		for j := 0; j < out.NY; j++ {
			for i := 0; i < out.NX; i++ {
				v, ok := pos[key(position(out, i, j, k))]
				require.True(t, ok)
				require.Equal(t, v, out.at(i, j, k))
			}
		}
	}
	same, err := Reorient(out)
	require.NoError(t, err)
	assert.Same(t, out, same)
}

func TestSlicesAndSlabs(t *testing.T) {
	// 2 channels of a 2x1x3 volume: value = 100*c + 10*k + i.
	ch := &Channels{C: 2, NX: 2, NY: 1, NZ: 3, V: make([]float32, 12)}
	for c := 0; c < 2; c++ {
		for k := 0; k < 3; k++ {
			for i := 0; i < 2; i++ {
				ch.V[c*6+k*2+i] = float32(100*c + 10*k + i)
			}
		}
	}
	s := make([]float32, 12)
	SlicesTensor(ch, s)
	assert.Equal(t, []float32{0, 1, 100, 101, 10, 11, 110, 111, 20, 21, 120, 121}, s)
	slab := make([]float32, 3*2*3*2)
	SlabsTensor(ch, 1, slab)
	// slice 0: channel 0 slices (0,0,1), channel 1 slices (0,0,1) — clamped at the edge.
	assert.Equal(t, []float32{0, 1, 0, 1, 10, 11, 100, 101, 100, 101, 110, 111}, slab[:12])
	assert.Equal(t, []float32{10, 11, 20, 21, 20, 21, 110, 111, 120, 121, 120, 121}, slab[24:])
}

func TestPatchStarts(t *testing.T) {
	assert.Equal(t, []int{0, 2, 4, 6}, PatchStarts(10, 4, 0.5))
	assert.Equal(t, []int{0, 3, 6, 7}, PatchStarts(11, 4, 0.25))
	assert.Equal(t, []int{0}, PatchStarts(3, 4, 0.5))
	assert.Equal(t, []int{0}, PatchStarts(4, 4, 0.5))
	assert.Equal(t, []int{0, 4, 6}, PatchStarts(10, 4, 0))
}

func TestGaussianMap(t *testing.T) {
	m := GaussianMap([3]int{9, 9, 9})
	assert.InDelta(t, 1, m[(4*9+4)*9+4], 1e-6)
	assert.InDelta(t, m[0], m[len(m)-1], 1e-7)
	assert.Positive(t, m[0])
	assert.Less(t, m[0], m[(4*9+4)*9+3])
}

// Sliding windows with the identity as the "model" give the input back.
func TestSlidingWindowRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	ch := &Channels{C: 2, NX: 13, NY: 11, NZ: 7, V: make([]float32, 2*13*11*7)}
	for i := range ch.V {
		ch.V[i] = rng.Float32()
	}
	size, patch := [3]int{13, 11, 7}, [3]int{6, 5, 8} // z patch larger than the volume: padded
	agg := NewAggregator(2, size, patch)
	buf := make([]float32, 2*6*5*8)
	for _, p := range Patches(size, patch, 0.5) {
		ExtractPatch(ch, p, patch, -1, buf)
		require.NoError(t, agg.Add(p, buf))
	}
	out := agg.Result()
	for i := range ch.V {
		require.InDelta(t, ch.V[i], out.V[i], 1e-5)
	}
	assert.Error(t, agg.Add(Patch{}, buf[:3]))
}

func TestCropOrPadAndBack(t *testing.T) {
	g := grid(6, 4, 2, [3]float64{0.5, 0.5, 3}, func(i, j, k int) float32 { return float32(100*k + 10*j + i + 1) })
	g.Geometry.Origin = [3]float64{-1, -2, -3}
	c := CropOrPad(g, 6, 4, 0) // rows 4 -> 6 (pad 1 each side), cols 6 -> 4 (crop 1 each side)
	assert.Equal(t, [3]int{4, 6, 2}, [3]int{c.NX, c.NY, c.NZ})
	assert.Equal(t, [3]float64{-0.5, -2.5, -3}, c.Geometry.Origin)
	assert.Equal(t, float32(0), c.at(0, 0, 0))
	assert.Equal(t, g.at(1, 0, 0), c.at(0, 1, 0))
	// Same position, same value.
	assert.Equal(t, position(g, 1, 0, 0), position(c, 0, 1, 0))

	// Back onto the source grid: what survived the crop comes back exactly.
	back := ToGrid(c, g.Geometry, [3]int{g.NX, g.NY, g.NZ}, Nearest)
	for k := 0; k < 2; k++ {
		for j := 0; j < 4; j++ {
			for i := 1; i < 5; i++ {
				require.Equal(t, g.at(i, j, k), back.at(i, j, k))
			}
			assert.Equal(t, float32(0), back.at(0, j, k)) // cropped away
		}
	}
}

func TestToGridUndoesResample(t *testing.T) {
	sp := [3]float64{0.5, 0.5, 2}
	f := func(i, j, k int) float32 { return float32(3*i + 2*j + 7*k) }
	g := grid(16, 12, 6, sp, f)
	mid := Resample(g, [3]float64{1, 1, 1}, [3]int{8, 6, 11}, Linear)
	back := ToGrid(mid, g.Geometry, [3]int{16, 12, 6}, Linear)
	for k := 0; k < 6; k++ {
		for j := 0; j < 11; j++ { // within the resampled extent
			for i := 0; i < 15; i++ {
				require.InDelta(t, f(i, j, k), back.at(i, j, k), 1e-3, "voxel %d,%d,%d", i, j, k)
			}
		}
	}
}

// A reoriented grid maps back onto the original exactly with ToGrid.
func TestToGridUndoesReorient(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	g := grid(5, 4, 3, [3]float64{0.5, 0.8, 2}, func(i, j, k int) float32 { return rng.Float32() })
	g.Geometry.Direction = [9]float64{0, -1, 0, 1, 0, 0, 0, 0, -1}
	g.Geometry.Origin = [3]float64{4, -7, 12}
	r, err := Reorient(g)
	require.NoError(t, err)
	back := ToGrid(r, g.Geometry, [3]int{g.NX, g.NY, g.NZ}, Nearest)
	assert.Equal(t, g.V, back.V)
	lin := ToGrid(r, g.Geometry, [3]int{g.NX, g.NY, g.NZ}, Linear)
	for i := range g.V {
		require.InDelta(t, g.V[i], lin.V[i], 1e-5)
	}
}

func ctVolume() *volume.Volume {
	g := grid(20, 16, 6, [3]float64{0.5, 0.5, 3}, func(i, j, k int) float32 {
		if i >= 6 && i < 12 && j >= 5 && j < 9 && k >= 2 && k < 4 {
			return 70
		}
		return 30
	})
	g.Geometry.Origin = [3]float64{-5, -4, 10}
	return &volume.Volume{Dims: [3]int64{6, 16, 20}, Geometry: g.Geometry, Voxels: *tensorOf(g.V, []int64{6, 16, 20})}
}

// Every layout prepares the right shape, and mapping the windowed input
// itself back (an identity "model") reproduces the windowed source.
func TestPrepareLayoutsRoundTrip(t *testing.T) {
	brain := Window{Center: 40, Width: 80}
	for _, spec := range []Spec{
		{Windows: []Window{brain}, Layout: LayoutVolume},
		{Windows: []Window{brain}, Layout: LayoutSlices, TargetSpacing: [3]float64{1, 1, 0}, InPlaneSize: [2]int{10, 12}},
		{Windows: []Window{brain, {Center: 80, Width: 200}}, Layout: LayoutSlabs, SlabRadius: 1},
		{Windows: []Window{brain}, Layout: LayoutPatches, PatchSize: [3]int{8, 8, 4}, Overlap: 0.5, TargetSpacing: [3]float64{1, 1, 1}, Orientation: "LPS"},
	} {
		t.Run(spec.Layout, func(t *testing.T) {
			v := ctVolume()
			p, err := Prepare(v, spec, "image")
			require.NoError(t, err)
			in := p.Input
			switch spec.Layout {
			case LayoutVolume:
				assert.Equal(t, []int64{1, 1, 6, 16, 20}, in.Shape)
			case LayoutSlices:
				assert.Equal(t, []int64{6, 1, 10, 12}, in.Shape)
			case LayoutSlabs:
				assert.Equal(t, []int64{6, 6, 16, 20}, in.Shape)
				return // a slab input is not a per-voxel output
			case LayoutPatches:
				assert.Equal(t, int64(1), in.Shape[1])
				assert.Equal(t, []int64{4, 8, 8}, in.Shape[2:])
			}
			back, err := p.ToSource(in)
			require.NoError(t, err)
			assert.Equal(t, []int64{1, 1, 6, 16, 20}, back.Shape)
			got, _ := back.Float32s()
			src, _ := v.Float32()
			if spec.Layout == LayoutVolume {
				for i, x := range src {
					require.InDelta(t, brain.Apply(x), got[i], 1e-6)
				}
				return
			}
			// Resampled or cropped: the centre of the dense block survives.
			centre := (3*16+7)*20 + 9
			assert.Greater(t, got[centre], float32(0.8))
			assert.InDelta(t, brain.Apply(30), got[0+20*8], 0.05)
		})
	}
}

func tensorOf(v []float32, shape []int64) *tensor.Tensor { return tensor.FromFloat32("", shape, v) }

// Labels follow the image through Prepare's geometry: where the windowed
// image is dense, the label is set.
func TestPrepareLabels(t *testing.T) {
	v := ctVolume()
	src, _ := v.Float32()
	labels := make([]uint8, len(src))
	for i, x := range src {
		if x > 50 {
			labels[i] = 1
		}
	}
	for _, spec := range []Spec{
		{Windows: []Window{{Center: 40, Width: 80}}, Layout: LayoutSlices, TargetSpacing: [3]float64{1, 1, 0}, InPlaneSize: [2]int{10, 12}},
		{Layout: LayoutPatches, PatchSize: [3]int{8, 8, 4}, Overlap: 0.5, TargetSpacing: [3]float64{1, 1, 1}},
		{Layout: LayoutVolume},
	} {
		p, err := Prepare(v, spec, "image")
		require.NoError(t, err)
		lt, err := p.PrepareLabels(labels)
		require.NoError(t, err)
		img, _ := p.Input.Float32s()
		require.Equal(t, len(img), len(lt.Data), spec.Layout) // one channel: same layout
		for i, l := range lt.Data {
			dense := img[i] > 0.8 || (len(spec.Windows) == 0 && img[i] > 50)
			if l == 1 {
				assert.True(t, dense, "%s: label without dense image at %d", spec.Layout, i)
			}
		}
		_, err = p.PrepareLabels(labels[:10])
		assert.Error(t, err)
	}
}

// refAccel is an Accelerator computing on the CPU what the GPU computes;
// fail makes it fail, to check the fallback.
type refAccel struct{ fail bool }

func (refAccel) Name() string { return "ref" }

func (a refAccel) WindowResample(src []float32, dims [3]int, maps [3]AxisMap, ws []Window, out []float32) error {
	if a.fail {
		return errors.New("out of memory")
	}
	g := &Grid{NX: dims[0], NY: dims[1], NZ: dims[2], V: src}
	r := &Grid{NX: len(maps[0].W), NY: len(maps[1].W), NZ: len(maps[2].W)}
	r.V = make([]float32, r.Len())
	ResampleMapsInto(g, r, maps)
	Windows(r, ws, out)
	return nil
}

// PrepareWith an accelerator gives the same input, bit for bit, as the CPU
// path, with and without resampling; a failing accelerator falls back.
func TestPrepareWithAccelerator(t *testing.T) {
	brain, sub := Window{Center: 40, Width: 80}, Window{Center: 80, Width: 200}
	for _, spec := range []Spec{
		{Windows: []Window{brain}, Layout: LayoutVolume},
		{Windows: []Window{brain, sub}, Layout: LayoutSlabs, SlabRadius: 1, TargetSpacing: [3]float64{0.7, 0.9, 2}, InPlaneSize: [2]int{10, 12}},
		{Windows: []Window{brain}, Layout: LayoutPatches, PatchSize: [3]int{8, 8, 4}, Overlap: 0.5, TargetSpacing: [3]float64{1, 1, 1}, Orientation: "LPS"},
	} {
		want, err := Prepare(ctVolume(), spec, "image")
		require.NoError(t, err)
		got, err := PrepareWith(ctVolume(), spec, "image", refAccel{})
		require.NoError(t, err)
		assert.Equal(t, "ref", got.Device)
		assert.Equal(t, want.Input.Shape, got.Input.Shape)
		assert.Equal(t, want.Input.Data, got.Input.Data)
		assert.Equal(t, want.Model, got.Model)

		fell, err := PrepareWith(ctVolume(), spec, "image", refAccel{fail: true})
		require.NoError(t, err)
		assert.Empty(t, fell.Device)
		assert.Equal(t, want.Input.Data, fell.Input.Data)
		require.Len(t, fell.Warnings, 1)
		assert.Contains(t, fell.Warnings[0], "preprocessing on ref failed (out of memory); ran on the CPU")
	}
	// Without windows there is nothing for the accelerator to do.
	p, err := PrepareWith(ctVolume(), Spec{Normalize: "zscore"}, "image", refAccel{})
	require.NoError(t, err)
	assert.Empty(t, p.Device)
}

// The separable path of ToGridInto (no rotation between the grids) gives
// the general path's values bit for bit, flipped axes and outside voxels
// included; a rotated target takes the general path.
func TestToGridSeparableMatchesGeneral(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	src := grid(23, 17, 9, [3]float64{0.43, 0.43, 2.5}, func(i, j, k int) float32 { return r.Float32()*200 - 100 })
	src.Geometry.Origin = [3]float64{-5, 3, 12}
	for _, tc := range []struct {
		name string
		dir  [9]float64
	}{
		{"aligned", [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}},
		{"flipped", [9]float64{-1, 0, 0, 0, 1, 0, 0, 0, -1}},
		{"rotated", [9]float64{0.8, 0.6, 0, -0.6, 0.8, 0, 0, 0, 1}},
	} {
		for _, interp := range []Interp{Linear, Nearest} {
			target := src.Geometry
			target.Direction = tc.dir
			target.Spacing = [3]float64{1.1, 0.7, 1.9}
			target.Origin = [3]float64{-6, 2, 11}
			size := [3]int{14, 21, 15}
			init := make([]float32, size[0]*size[1]*size[2])
			for i := range init {
				init[i] = -7
			}
			fast := &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: target, V: append([]float32(nil), init...)}
			ToGridInto(src, fast, interp)
			separableToGrid = false
			slow := &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: target, V: append([]float32(nil), init...)}
			ToGridInto(src, slow, interp)
			separableToGrid = true
			assert.Equal(t, slow.V, fast.V, "%s interp %d", tc.name, interp)
		}
	}
}

// refAccelI16 also reads int16 stored values with their rescale, as the
// GPU's int16 kernel does; it counts which entry ran.
type refAccelI16 struct {
	refAccel
	f32, i16 *int
}

func (a refAccelI16) WindowResample(src []float32, dims [3]int, maps [3]AxisMap, ws []Window, out []float32) error {
	*a.f32++
	return a.refAccel.WindowResample(src, dims, maps, ws, out)
}

func (a refAccelI16) WindowResampleI16(src []int16, dims [3]int, slope, icpt float32, maps [3]AxisMap, ws []Window, out []float32) error {
	*a.i16++
	v := make([]float32, len(src))
	for i, s := range src {
		v[i] = float32(s)*slope + icpt
	}
	return a.refAccel.WindowResample(v, dims, maps, ws, out)
}

// randomCT is ctVolume's geometry with random whole HU values, so that
// every interpolation weight matters.
func randomCT(dir [9]float64) *volume.Volume {
	v := ctVolume()
	r := rand.New(rand.NewPCG(3, 4))
	f := make([]float32, 6*16*20)
	for i := range f {
		f[i] = float32(r.IntN(3000) - 1000)
	}
	v.Voxels = *tensorOf(f, []int64{6, 16, 20})
	v.Geometry.Direction = dir
	return v
}

// ctStored is randomCT kept as int16 stored values with a rescale.
func ctStored(dir [9]float64) *volume.Volume {
	v := randomCT(dir)
	f, _ := v.Float32()
	s := make([]int16, len(f))
	for i, x := range f {
		s[i] = int16(x) + 1024
	}
	v.Geometry.Direction = dir
	v.Voxels = tensor.Tensor{Name: "volume", DType: tensor.Int16, Shape: v.Dims[:], Data: unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 2*len(s))}
	v.Rescale = &volume.Rescale{Slope: 1, Intercept: -1024}
	return v
}

// An int16 volume with a rescale goes to an accelerator's int16 entry as
// it is, and gives the float32 path's input bit for bit; a volume that
// must be reoriented first takes the float32 path, and a failing
// accelerator falls back to the CPU, which reads the int16 rows it needs.
func TestPrepareWithAcceleratorI16(t *testing.T) {
	spec := Spec{Windows: []Window{{Center: 40, Width: 80}, {Center: 80, Width: 200}}, Layout: LayoutSlabs, SlabRadius: 1,
		TargetSpacing: [3]float64{0.7, 0.9, 2}, InPlaneSize: [2]int{10, 12}, Orientation: "LPS"}
	identity := [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}
	flipped := [9]float64{-1, 0, 0, 0, 1, 0, 0, 0, 1}
	for _, dir := range [][9]float64{identity, flipped} {
		want, err := Prepare(randomCT(dir), spec, "image")
		require.NoError(t, err)
		var f32, i16 int
		got, err := PrepareWith(ctStored(dir), spec, "image", refAccelI16{f32: &f32, i16: &i16})
		require.NoError(t, err)
		assert.Equal(t, want.Input.Data, got.Input.Data)
		assert.Equal(t, want.Model, got.Model)
		if dir == identity {
			assert.Equal(t, [2]int{0, 1}, [2]int{f32, i16}, "int16 as stored")
		} else {
			assert.Equal(t, [2]int{1, 0}, [2]int{f32, i16}, "reoriented first, as float32")
		}
	}
	// Without an accelerator the CPU resamples straight from the int16
	// rows it needs; without resampling it converts the volume whole.
	// Either way the input is the float32 path's, bit for bit.
	noResample := spec
	noResample.TargetSpacing, noResample.InPlaneSize = [3]float64{}, [2]int{}
	for _, sp := range []Spec{spec, noResample} {
		want, err := Prepare(randomCT(identity), sp, "image")
		require.NoError(t, err)
		got, err := Prepare(ctStored(identity), sp, "image")
		require.NoError(t, err)
		assert.Equal(t, want.Input.Data, got.Input.Data)
		assert.Equal(t, want.Model, got.Model)
	}
	var f32, i16 int
	fell, err := PrepareWith(ctStored(identity), spec, "image", refAccelI16{refAccel: refAccel{fail: true}, f32: &f32, i16: &i16})
	require.NoError(t, err)
	want, err := Prepare(randomCT(identity), spec, "image")
	require.NoError(t, err)
	assert.Equal(t, want.Input.Data, fell.Input.Data)
	assert.Contains(t, fell.Warnings[0], "ran on the CPU")
}

// SlabsCropped is CropOrPad on each channel, then SlabsTensor, exactly.
func TestSlabsCroppedMatchesCropThenSlabs(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	ch := &Channels{C: 2, NX: 9, NY: 7, NZ: 4}
	ch.V = make([]float32, ch.C*ch.NX*ch.NY*ch.NZ)
	for i := range ch.V {
		ch.V[i] = r.Float32()
	}
	for _, size := range [][2]int{{5, 12}, {10, 4}, {7, 9}} { // rows, cols: crop, pad, both
		rows, cols := size[0], size[1]
		var cropped *Channels
		for c := 0; c < ch.C; c++ {
			one := &Grid{NX: ch.NX, NY: ch.NY, NZ: ch.NZ, V: ch.V[c*ch.vox() : (c+1)*ch.vox()]}
			cp := CropOrPad(one, rows, cols, -1)
			if cropped == nil {
				cropped = &Channels{C: ch.C, NX: cp.NX, NY: cp.NY, NZ: cp.NZ, V: make([]float32, ch.C*cp.Len())}
			}
			copy(cropped.V[c*cp.Len():], cp.V)
		}
		for _, radius := range []int{0, 1} {
			want := make([]float32, len(cropped.V)*(2*radius+1))
			SlabsTensor(cropped, radius, want)
			lay := SlabLayout{R: radius, Rows: rows, Cols: cols, OffX: (ch.NX - cols) / 2, OffY: (ch.NY - rows) / 2, Pad: -1}
			assert.Equal(t, want, SlabsCropped(ch, lay), "%dx%d r %d", rows, cols, radius)
		}
	}
}

// residentRef is a ResidentAccelerator over host memory: the CPU reference
// of the fused pass and of SlabsCropped, its output left in a "device"
// buffer (host bytes) as a GPU leaves it in device memory.
type residentRef struct {
	refAccelI16
	released *int
}

func (residentRef) ResidentMemory() (string, int) { return "host", 0 }

func (a residentRef) PrepareSlabs(src16 []int16, src32 []float32, dims [3]int, slope, icpt float32, maps [3]AxisMap, ws []Window, lay SlabLayout) (Resident, error) {
	ch, err := a.channels(src16, src32, dims, slope, icpt, maps, ws)
	if err != nil {
		return Resident{}, err
	}
	return a.lend(lay.Bytes(SlabsCropped(ch, lay))), nil
}

func (a residentRef) PreparePatches(src16 []int16, src32 []float32, dims [3]int, slope, icpt float32, maps [3]AxisMap, ws []Window, lay PatchLayout) (Resident, error) {
	ch, err := a.channels(src16, src32, dims, slope, icpt, maps, ws)
	if err != nil {
		return Resident{}, err
	}
	return a.lend(lay.Bytes(PatchesTensor(ch, lay))), nil
}

// channels is the fused pass, on the CPU.
func (a residentRef) channels(src16 []int16, src32 []float32, dims [3]int, slope, icpt float32, maps [3]AxisMap, ws []Window) (*Channels, error) {
	size := [3]int{len(maps[0].W), len(maps[1].W), len(maps[2].W)}
	ch := &Channels{C: len(ws), NX: size[0], NY: size[1], NZ: size[2], V: make([]float32, len(ws)*size[0]*size[1]*size[2])}
	var err error
	if src16 != nil {
		err = a.WindowResampleI16(src16, dims, slope, icpt, maps, ws, ch.V)
	} else {
		err = a.WindowResample(src32, dims, maps, ws, ch.V)
	}
	return ch, err
}

// lend leaves b in "device" memory.
func (a residentRef) lend(b []byte) Resident {
	return Resident{DeviceBytes: tensor.DeviceBytes{Addr: uintptr(unsafe.Pointer(&b[0])), Len: len(b), Host: b},
		Release: func() { *a.released++ }}
}

// PrepareResident leaves in the accelerator's memory exactly the input
// PrepareWith makes, for slices and slabs, cropped or padded, from int16
// or float32 volumes; other layouts and reoriented volumes are not taken.
func TestPrepareResidentMatchesPrepareWith(t *testing.T) {
	identity := [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}
	windows := []Window{{Center: 40, Width: 80}, {Center: 80, Width: 200}}
	var f32, i16, released int
	acc := residentRef{refAccelI16{f32: &f32, i16: &i16}, &released}
	for _, spec := range []Spec{
		{Windows: windows, Layout: LayoutSlabs, SlabRadius: 1, TargetSpacing: [3]float64{0.7, 0.9, 2}, InPlaneSize: [2]int{10, 12}, PadValue: -0.25},
		{Windows: windows, Layout: LayoutSlices, TargetSpacing: [3]float64{1, 1, 0}, InPlaneSize: [2]int{6, 14}},
		{Windows: windows[:1], Layout: LayoutSlabs, SlabRadius: 2, Orientation: "LPS"},
		{Windows: windows, Layout: LayoutSlices, TargetSpacing: [3]float64{1, 1, 0}, Half: true},
		{Windows: windows, Layout: LayoutPatches, PatchSize: [3]int{8, 8, 4}, Overlap: 0.25, TargetSpacing: [3]float64{0.8, 0.8, 0}, PadValue: -1},
		{Windows: windows[:1], Layout: LayoutPatches, PatchSize: [3]int{6, 6, 6}, Half: true},
	} {
		for _, v := range []*volume.Volume{randomCT(identity), ctStored(identity)} {
			want, err := Prepare(randomCT(identity), spec, "image")
			require.NoError(t, err)
			got, ok, err := PrepareResident(v, spec, "image", acc)
			require.NoError(t, err)
			require.True(t, ok)
			assert.Nil(t, got.Input.Data)
			assert.Equal(t, want.Input.DType, got.Input.DType)
			assert.Equal(t, want.Input.Shape, got.Input.Shape)
			assert.Equal(t, want.Input.Data, got.Input.Device.Host)
			assert.Equal(t, want.Model, got.Model)
			assert.Equal(t, want.ModelSize, got.ModelSize)
			assert.Equal(t, want.Source, got.Source)
			assert.Equal(t, want.Patches, got.Patches)
			got.Release()
			got.Release()
		}
	}
	assert.Equal(t, 12, released)
	for _, spec := range []Spec{
		{Windows: windows, Layout: LayoutVolume},
		{Windows: windows, Layout: LayoutPatches, PatchSize: [3]int{8, 8, 4}, InPlaneSize: [2]int{6, 6}},
		{Normalize: "zscore", Layout: LayoutSlices},
	} {
		_, ok, err := PrepareResident(randomCT(identity), spec, "image", acc)
		assert.NoError(t, err)
		assert.False(t, ok)
	}
	_, ok, err := PrepareResident(randomCT([9]float64{-1, 0, 0, 0, 1, 0, 0, 0, 1}), Spec{Windows: windows, Layout: LayoutSlices, Orientation: "LPS"}, "image", acc)
	assert.NoError(t, err)
	assert.False(t, ok, "needs reorienting first")
}

// A model output in device memory is read where it lies through strides:
// gathered on the host, they give the channels ModelChannels gives, for
// volumes, slices and slabs, one channel and several. Patches are
// stitched on the host.
func TestResidentChannels(t *testing.T) {
	nx, ny, nz := 5, 4, 3
	plane, vox := nx*ny, nx*ny*nz
	for _, tt := range []struct {
		layout string
		c      int
	}{{LayoutVolume, 1}, {LayoutVolume, 2}, {LayoutSlices, 1}, {LayoutSlices, 3}, {LayoutSlabs, 2}} {
		t.Run(fmt.Sprintf("%s/%d", tt.layout, tt.c), func(t *testing.T) {
			p := &Prepared{Spec: Spec{Layout: tt.layout}, ModelSize: [3]int{nx, ny, nz}}
			v := make([]float32, tt.c*vox)
			for i := range v {
				v[i] = float32(i)
			}
			shape := []int64{int64(nz), int64(tt.c), int64(ny), int64(nx)}
			if tt.layout == LayoutVolume {
				shape = []int64{1, int64(tt.c), int64(nz), int64(ny), int64(nx)}
			}
			// Channel-major, by the layout's own index formula.
			want := make([]float32, len(v))
			for c := 0; c < tt.c; c++ {
				for k := 0; k < nz; k++ {
					for j := 0; j < plane; j++ {
						src := (k*tt.c+c)*plane + j
						if tt.layout == LayoutVolume {
							src = c*vox + k*plane + j
						}
						want[c*vox+k*plane+j] = v[src]
					}
				}
			}
			host := tensor.ViewFloat32("mask", shape, v)
			ch, err := p.ModelChannels(host)
			require.NoError(t, err)
			assert.Equal(t, want, ch.V)

			b := unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
			dev := &tensor.Tensor{Name: "mask", DType: tensor.Float32, Shape: shape,
				Device: &tensor.DeviceBytes{Addr: uintptr(unsafe.Pointer(&b[0])), Len: len(b), Host: b}}
			rc, err := p.ResidentChannels(dev)
			require.NoError(t, err)
			assert.Equal(t, dev.Device.Addr, rc.Bytes.Addr)
			g, err := rc.Gather(v)
			require.NoError(t, err)
			assert.Equal(t, want, g.V)

			_, err = p.ResidentChannels(host)
			assert.ErrorContains(t, err, "not in device memory")
			bad := *dev
			bad.Shape = append([]int64{}, shape...)
			bad.Shape[len(shape)-1]++
			_, err = p.ResidentChannels(&bad)
			assert.ErrorContains(t, err, "has shape")
		})
	}

	// Patches: the predictions stitched as ModelChannels stitches them.
	spec := Spec{Layout: LayoutPatches, PatchSize: [3]int{4, 3, 2}, Overlap: 0.5}
	p := &Prepared{Spec: spec, ModelSize: [3]int{nx, ny, nz}, Patches: Patches([3]int{nx, ny, nz}, spec.PatchSize, spec.Overlap)}
	shape := []int64{int64(len(p.Patches)), 2, 2, 3, 4}
	v := make([]float32, len(p.Patches)*2*24)
	for i := range v {
		v[i] = float32(i % 17)
	}
	want, err := p.ModelChannels(tensor.ViewFloat32("mask", shape, v))
	require.NoError(t, err)
	b := unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
	rc, err := p.ResidentChannels(&tensor.Tensor{Name: "mask", DType: tensor.Float32, Shape: shape, Device: &tensor.DeviceBytes{Addr: uintptr(unsafe.Pointer(&b[0])), Len: len(b), Host: b}})
	require.NoError(t, err)
	assert.Equal(t, spec.PatchSize, rc.PatchSize)
	assert.Len(t, rc.Patches, len(p.Patches))
	got, err := rc.Gather(v)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Equal(t, vox, rc.CStride, "stitched channels are contiguous")
}

// Half writes the model input as float16: the float32 input, every value
// rounded to nearest even, for every layout.
func TestPrepareHalf(t *testing.T) {
	identity := [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}
	windows := []Window{{Center: 40, Width: 80}}
	for _, spec := range []Spec{
		{Windows: windows, Layout: LayoutSlabs, SlabRadius: 1, TargetSpacing: [3]float64{0.7, 0.9, 2}},
		{Normalize: "zscore", Layout: LayoutVolume},
		{Windows: windows, Layout: LayoutPatches, PatchSize: [3]int{8, 8, 4}, Overlap: 0.25},
	} {
		full, err := Prepare(randomCT(identity), spec, "image")
		require.NoError(t, err)
		spec.Half = true
		half, err := Prepare(randomCT(identity), spec, "image")
		require.NoError(t, err)
		v, err := full.Input.Float32s()
		require.NoError(t, err)
		assert.Equal(t, tensor.FromFloat32Half("image", full.Input.Shape, v), half.Input, spec.Layout)
	}
}
