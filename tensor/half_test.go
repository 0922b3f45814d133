package tensor

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHalfKnownValues(t *testing.T) {
	for _, tc := range []struct {
		f float32
		h uint16
	}{
		{0, 0}, {1, 0x3c00}, {-2, 0xc000}, {0.5, 0x3800}, {65504, 0x7bff},
		{65520, 0x7c00},                       // rounds up past the largest half: infinity
		{65519.996, 0x7bff},                   // below the midpoint: the largest half
		{float32(math.Inf(-1)), 0xfc00},       //
		{float32(math.Ldexp(1, -24)), 1},      // the smallest subnormal
		{float32(math.Ldexp(1, -25)), 0},      // half of it: a tie, to even (0)
		{float32(math.Ldexp(3, -26)), 1},      // above the tie
		{float32(math.Ldexp(1, -14)), 0x0400}, // the smallest normal
		{float32(math.Ldexp(1023, -24)), 0x03ff},
		{1 + 1.0/2048, 0x3c00}, // a tie between 1 and its successor: to even
		{1 + 3.0/2048, 0x3c02}, // a tie: up to even
	} {
		assert.Equal(t, tc.h, Float32ToHalf(tc.f), "%g", tc.f)
	}
	assert.True(t, math.IsNaN(float64(HalfToFloat32(Float32ToHalf(float32(math.NaN()))))))
}

// Every half comes back through float32 unchanged.
func TestHalfRoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := HalfToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			continue
		}
		require.Equal(t, uint16(h), Float32ToHalf(f), "half %#04x (%g)", h, f)
	}
}

// Rounding picks the nearest half, and the even one on a tie: checked
// exactly (in float64, where halves and float32s are exact) on random
// float32s over the half's range and beyond.
func TestHalfRoundsToNearestEven(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for k := 0; k < 2_000_000; k++ {
		f := float32(math.Ldexp(r.Float64()*2-1, r.IntN(44)-28))
		h := Float32ToHalf(f)
		got := float64(HalfToFloat32(h))
		if math.IsInf(got, 0) {
			require.GreaterOrEqual(t, math.Abs(float64(f)), 65520.0, "%g", f)
			continue
		}
		for _, n := range []uint16{h - 1, h + 1} { // the neighbours, same sign
			if n&0x7fff >= 0x7c00 || (h&0x7fff == 0 && n == h-1) {
				continue
			}
			other := float64(HalfToFloat32(n))
			d, e := math.Abs(float64(f)-got), math.Abs(float64(f)-other)
			require.True(t, d < e || (d == e && h&1 == 0), "%g -> %#04x (%g), but %#04x (%g) is nearer", f, h, got, n, other)
		}
	}
}

func TestFromFloat32HalfAndBack(t *testing.T) {
	v := []float32{0, 1.5, -3.25, 1000}
	h := FromFloat32Half("x", []int64{2, 2}, v)
	require.NoError(t, h.Check())
	back, err := ToFloat32(h)
	require.NoError(t, err)
	assert.Equal(t, v, back)
}
