package tensor

import "math"

// HalfToFloat32 widens an IEEE 754 binary16 value (exactly: every half is
// a float32).
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // inf, NaN (payload kept)
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: man * 2^-24, exact in float32.
	f := float32(man) * (1.0 / (1 << 24))
	if sign != 0 {
		f = -f
	}
	return f
}

// Float32ToHalf narrows f to binary16, rounding to nearest, ties to even,
// as the GPU's cvt.rn.f16.f32 does: overflow gives infinity, tiny values
// subnormals or zero. NaN gives a quiet NaN.
func Float32ToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return sign | 0x7e00 | uint16(man>>13) // quiet NaN
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15 // the half's biased exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// A half subnormal or zero: f is m * 2^(exp-150) with the
		// implicit bit in m, and a half subnormal h * 2^-24, so h is m
		// shifted right by 126 - exp = 14 - e bits, rounded.
		if e < -10 {
			return sign // below half the smallest subnormal: zero
		}
		m := man | 0x800000
		shift := uint32(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // a carry into the exponent is right, up to infinity
	}
	return sign | uint16(h)
}

// FromFloat32Half builds a float16 tensor from float32 values, rounded to
// nearest even.
func FromFloat32Half(name string, shape []int64, v []float32) *Tensor {
	data := make([]byte, 2*len(v))
	for i, x := range v {
		h := Float32ToHalf(x)
		data[2*i], data[2*i+1] = byte(h), byte(h>>8)
	}
	return &Tensor{Name: name, DType: Float16, Shape: shape, Data: data}
}
