package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/preprocess"
	"github.com/voxserve/voxserve/volume"
)

// The harness: every operation of an implementation against the CPU
// reference, on fresh random inputs each run (the seed is logged), with
// the output poisoned first so that an unwritten element fails.

const tol = 1e-5 // relative error allowed for float32 arithmetic

func newRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 0x766f78))
}

func randF32(r *rand.Rand, n int, lo, hi float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = lo + (hi-lo)*r.Float32()
	}
	return v
}

func nans(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return v
}

// blobs is a random label volume of small and large clumps of labels 1..k.
func blobs(r *rand.Rand, n, k int, density float64) []uint8 {
	lab := make([]uint8, n)
	for i := range lab {
		if r.Float64() < density {
			lab[i] = uint8(1 + r.IntN(k))
		}
	}
	return lab
}

// sizes are the volume shapes the checks run on: odd sizes that fill no
// block evenly, a thin one, and a CT-like slab.
var sizes = [][3]int{{67, 45, 23}, {1, 1, 1}, {130, 7, 3}, {256, 256, 40}}

func checkOps(t *testing.T, ops Ops, large bool) {
	t.Helper()
	ref := CPU{}
	r := newRand(t)
	shapes := sizes
	if !large {
		shapes = sizes[:3]
	}
	t.Run("WindowResampleI16", func(t *testing.T) {
		for _, d := range shapes {
			src := make([]int16, d[0]*d[1]*d[2])
			for i := range src {
				src[i] = int16(r.IntN(4096) - 1024)
			}
			for _, interp := range []preprocess.Interp{preprocess.Linear, preprocess.Nearest} {
				out := [3]int{max(1, d[0]*2/3), max(1, d[1]*5/4), max(1, d[2]*3/2)}
				var maps [3]preprocess.AxisMap
				for a := 0; a < 3; a++ {
					maps[a] = preprocess.NewAxisMap(out[a], d[a], float64(d[a])/float64(out[a])*(0.9+0.2*r.Float64()), interp)
				}
				ws := []preprocess.Window{{Center: 40, Width: 80}, {Center: 80, Width: 200}, {Center: 600, Width: 2800}}
				n := len(ws) * out[0] * out[1] * out[2]
				want, got := make([]float32, n), nans(n)
				slope, icpt := float32(1+r.IntN(2)), float32(-1024+r.IntN(3))
				require.NoError(t, ref.WindowResampleI16(src, d, slope, icpt, maps, ws, want))
				require.NoError(t, ops.WindowResampleI16(src, d, slope, icpt, maps, ws, got))
				assert.LessOrEqual(t, RelErr(got, want), tol, "dims %v -> %v", d, out)
				// The same on float32 values, as the server's preprocessing hook gets them.
				hu := make([]float32, len(src))
				for i, v := range src {
					hu[i] = float32(v)*slope + icpt
				}
				got = nans(n)
				require.NoError(t, ops.WindowResample(hu, d, maps, ws, got))
				assert.LessOrEqual(t, RelErr(got, want), tol, "float32, dims %v -> %v", d, out)
			}
		}
	})
	t.Run("Resample", func(t *testing.T) {
		for _, d := range shapes {
			src := randF32(r, d[0]*d[1]*d[2], -1, 1)
			out := [3]int{d[0] + 3, max(1, d[1]/2), d[2] + 1}
			var maps [3]preprocess.AxisMap
			for a := 0; a < 3; a++ {
				maps[a] = preprocess.NewAxisMap(out[a], d[a], float64(d[a])/float64(out[a]), preprocess.Linear)
			}
			n := out[0] * out[1] * out[2]
			want, got := make([]float32, n), nans(n)
			require.NoError(t, ref.Resample(src, d, maps, want))
			require.NoError(t, ops.Resample(src, d, maps, got))
			assert.LessOrEqual(t, RelErr(got, want), tol, "dims %v", d)
		}
	})
	t.Run("ToGrid", func(t *testing.T) {
		for _, d := range shapes {
			src := &preprocess.Grid{NX: d[0], NY: d[1], NZ: d[2], V: randF32(r, d[0]*d[1]*d[2], 0, 1)}
			src.Geometry = volume.Identity()
			src.Geometry.Spacing = [3]float64{0.7, 0.8, 2.5}
			// An oblique, flipped target, partly outside the source.
			target := volume.Identity()
			a := 0.3 + 0.4*r.Float64()
			target.Direction = [9]float64{math.Cos(a), math.Sin(a), 0, math.Sin(a), -math.Cos(a), 0, 0, 0, 1}
			target.Origin = [3]float64{2 * r.Float64(), -3, 1}
			target.Spacing = [3]float64{0.9, 1.1, 1.7}
			for _, interp := range []preprocess.Interp{preprocess.Linear, preprocess.Nearest} {
				size := [3]int{d[0] + 2, d[1], max(1, d[2]-1)}
				init := randF32(r, size[0]*size[1]*size[2], -1, 0)
				want := &preprocess.Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: target, V: append([]float32(nil), init...)}
				got := &preprocess.Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: target, V: append([]float32(nil), init...)}
				require.NoError(t, ref.ToGrid(src, want, interp))
				require.NoError(t, ops.ToGrid(src, got, interp))
				assert.LessOrEqual(t, RelErr(got.V, want.V), tol, "dims %v interp %d", d, interp)
			}
		}
	})
	t.Run("ClipScaleZScore", func(t *testing.T) {
		for _, d := range shapes {
			v := randF32(r, d[0]*d[1]*d[2], -2000, 3000)
			want, got := append([]float32(nil), v...), append([]float32(nil), v...)
			require.NoError(t, ref.ClipScale(want, -1000, 1000, 0, 1))
			require.NoError(t, ops.ClipScale(got, -1000, 1000, 0, 1))
			assert.LessOrEqual(t, RelErr(got, want), tol)
			want, got = append([]float32(nil), v...), append([]float32(nil), v...)
			m1, s1, err := ref.ZScore(want)
			require.NoError(t, err)
			m2, s2, err := ops.ZScore(got)
			require.NoError(t, err)
			assert.InDelta(t, m1, m2, 1e-9*(1+math.Abs(m1)))
			assert.InDelta(t, s1, s2, 1e-9*(1+s1))
			assert.LessOrEqual(t, RelErr(got, want), tol)
		}
	})
	t.Run("SlabsPatches", func(t *testing.T) {
		for _, d := range shapes {
			ch := &preprocess.Channels{C: 2, NX: d[0], NY: d[1], NZ: d[2]}
			ch.V = randF32(r, ch.C*d[0]*d[1]*d[2], 0, 1)
			for _, rad := range []int{0, 1, 4} {
				n := len(ch.V) * (2*rad + 1)
				want, got := make([]float32, n), nans(n)
				require.NoError(t, ref.Slabs(ch, rad, want))
				require.NoError(t, ops.Slabs(ch, rad, got))
				assert.Equal(t, want, got, "slabs r=%d dims %v", rad, d)
			}
			patch := [3]int{16, 16, 8}
			ps := preprocess.Patches(d, patch, 0.25)
			n := len(ps) * ch.C * 16 * 16 * 8
			want, got := make([]float32, n), nans(n)
			require.NoError(t, ref.ExtractPatches(ch, ps, patch, -7, want))
			require.NoError(t, ops.ExtractPatches(ch, ps, patch, -7, got))
			assert.Equal(t, want, got, "patches dims %v", d)

			pred := randF32(r, n, 0, 1)
			wa, err := ref.Aggregate(pred, ch.C, d, patch, 0.25)
			require.NoError(t, err)
			ga, err := ops.Aggregate(pred, ch.C, d, patch, 0.25)
			require.NoError(t, err)
			assert.LessOrEqual(t, RelErr(ga, wa), tol, "aggregate dims %v", d)
		}
	})
	t.Run("LabelMap", func(t *testing.T) {
		for _, tc := range []struct {
			act        string
			channels   int
			background bool // channel 0 a background class (bundle.BackgroundThreshold)
		}{{"sigmoid", 1, false}, {"", 1, false}, {"softmax", 3, false}, {"sigmoid", 2, false}, {"", 4, false}, {"softmax", 3, true}} {
			batch, n := 3, 1000+r.IntN(5000)
			v := randF32(r, batch*tc.channels*n, -4, 4)
			th := make([]float64, tc.channels)
			for i := range th {
				th[i] = 0.2 + 0.6*r.Float64()
			}
			if tc.background {
				th[0] = 2
			}
			want, got := make([]uint8, batch*n), make([]uint8, batch*n)
			for i := range got {
				got[i] = 0xEE
			}
			require.NoError(t, ref.LabelMap(v, batch, tc.channels, n, tc.act, th, want))
			require.NoError(t, ops.LabelMap(v, batch, tc.channels, n, tc.act, th, got))
			assert.Equal(t, want, got, "%s x%d", tc.act, tc.channels)
			if tc.background {
				assert.NotContains(t, got, uint8(1), "no voxel takes the background's value")
			}
		}
	})
	t.Run("Components", func(t *testing.T) {
		for _, d := range shapes {
			n := d[0] * d[1] * d[2]
			for _, density := range []float64{0.05, 0.3, 0.7} {
				lab := blobs(r, n, 3, density)
				want, got := append([]uint8(nil), lab...), append([]uint8(nil), lab...)
				dims := [3]int{d[2], d[1], d[0]}
				rw, err := ref.RemoveSmallComponents(want, dims, 4)
				require.NoError(t, err)
				rg, err := ops.RemoveSmallComponents(got, dims, 4)
				require.NoError(t, err)
				assert.Equal(t, rw, rg, "components removed, dims %v density %v", d, density)
				assert.Equal(t, want, got, "dims %v density %v", d, density)
			}
		}
	})
	t.Run("SourceLabels", func(t *testing.T) {
		for _, tc := range []struct {
			act string
			c   int
			rot bool
		}{{"sigmoid", 1, false}, {"sigmoid", 3, true}, {"softmax", 2, false}} {
			ch := &preprocess.Channels{C: tc.c, NX: 24, NY: 20, NZ: 9}
			ch.V = randF32(r, tc.c*24*20*9, -3, 3)
			model := volume.Identity()
			model.Spacing = [3]float64{1.8, 1.8, 5}
			source := volume.Identity()
			source.Spacing = [3]float64{0.45, 0.5, 1.25}
			source.Origin = [3]float64{-1, 2, 0.5}
			if tc.rot {
				source.Direction = [9]float64{0.8, 0.6, 0, -0.6, 0.8, 0, 0, 0, 1}
			}
			size := [3]int{90, 70, 33}
			th := make([]float64, tc.c)
			for i := range th {
				th[i] = 0.3 + 0.4*r.Float64()
			}
			want, err := ref.SourceLabels(ch, model, source, size, tc.act, th, 30)
			require.NoError(t, err)
			got, err := ops.SourceLabels(ch, model, source, size, tc.act, th, 30)
			require.NoError(t, err)
			assert.Equal(t, want, got, "%s x%d rotated %v", tc.act, tc.c, tc.rot)
		}
	})
	t.Run("LabelStats", func(t *testing.T) {
		for _, d := range shapes {
			n := d[0] * d[1] * d[2]
			lab := blobs(r, n, 250, 0.5)
			vals := randF32(r, n, -1000, 1000)
			cw, sw, err := ref.LabelStats(lab, vals)
			require.NoError(t, err)
			cg, sg, err := ops.LabelStats(lab, vals)
			require.NoError(t, err)
			assert.Equal(t, cw, cg)
			for l := range sw {
				assert.InDelta(t, sw[l], sg[l], 1e-9*(1+math.Abs(sw[l])), "label %d", l)
			}
			cn, _, err := ops.LabelStats(lab, nil)
			require.NoError(t, err)
			assert.Equal(t, cw, cn)
		}
	})
}

// TestCPUHarness runs the harness on the CPU implementation against
// itself: it keeps the harness compiling and working on machines without a
// GPU, where the cuda tests skip.
func TestCPUHarness(t *testing.T) {
	checkOps(t, CPU{}, false)
}

func TestRelErr(t *testing.T) {
	assert.Equal(t, 0.0, RelErr([]float32{1, 2}, []float32{1, 2}))
	assert.InDelta(t, 0.5, RelErr([]float32{3, 0}, []float32{2, 0}), 1e-12)
	assert.True(t, math.IsInf(RelErr([]float32{float32(math.NaN())}, []float32{1}), 1))
	assert.True(t, math.IsInf(RelErr([]float32{1}, []float32{1, 2}), 1))
}

func TestForPreprocessing(t *testing.T) {
	acc, closeFn, why, err := ForPreprocessing("auto")
	require.NoError(t, err)
	defer closeFn()
	if acc == nil {
		assert.Contains(t, why, ErrUnavailable.Error())
		_, _, _, err = ForPreprocessing("on")
		assert.ErrorIs(t, err, ErrUnavailable, "--gpu on must refuse to start without a GPU")
	}
	acc, _, why, err = ForPreprocessing("off")
	require.NoError(t, err)
	assert.Nil(t, acc)
	assert.Equal(t, "--gpu off", why)
	_, _, _, err = ForPreprocessing("maybe")
	assert.Error(t, err)
}
