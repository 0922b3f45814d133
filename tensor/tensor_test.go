package tensor

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		t    Tensor
		want string
	}{
		{"ok", Tensor{DType: Int16, Shape: []int64{2, 3}, Data: make([]byte, 12)}, ""},
		{"short", Tensor{DType: Int16, Shape: []int64{2, 3}, Data: make([]byte, 11)}, "data is 11 bytes but shape [2 3] of int16 needs 12"},
		{"empty shape axis", Tensor{DType: Float32, Shape: []int64{0, 3}}, "has no elements"},
		{"negative", Tensor{DType: Float32, Shape: []int64{-1, 3}}, "dimension 0 is -1"},
		{"overflow", Tensor{DType: Float32, Shape: []int64{1 << 20, 1 << 20, 1 << 20}}, "more than"},
		{"bad dtype", Tensor{DType: "complex64", Shape: []int64{1}, Data: make([]byte, 8)}, "unknown data type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.t.Check()
			if tt.want == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tt.want)
			}
		})
	}
}

func TestToFloat32(t *testing.T) {
	i16 := make([]byte, 6)
	for i, v := range []int16{-1024, 0, 3071} {
		binary.LittleEndian.PutUint16(i16[2*i:], uint16(v))
	}
	got, err := ToFloat32(&Tensor{DType: Int16, Shape: []int64{3}, Data: i16})
	require.NoError(t, err)
	assert.Equal(t, []float32{-1024, 0, 3071}, got)

	got, err = ToFloat32(&Tensor{DType: Uint8, Shape: []int64{2}, Data: []byte{0, 255}})
	require.NoError(t, err)
	assert.Equal(t, []float32{0, 255}, got)

	f := FromFloat32("x", []int64{2}, []float32{1.5, float32(math.Inf(-1))})
	got, err = f.Float32s()
	require.NoError(t, err)
	assert.Equal(t, []float32{1.5, float32(math.Inf(-1))}, got)
}

func TestNpyRoundTrip(t *testing.T) {
	for _, dt := range DTypes() {
		t.Run(string(dt), func(t *testing.T) {
			in := &Tensor{DType: dt, Shape: []int64{2, 3}, Data: make([]byte, 6*dt.Size())}
			for i := range in.Data {
				in.Data[i] = byte(i)
			}
			var buf bytes.Buffer
			require.NoError(t, WriteNpy(&buf, in))
			assert.Zero(t, (buf.Len()-len(in.Data))%64, "header must align data to 64 bytes")
			out, err := ReadNpy(&buf, 0)
			require.NoError(t, err)
			assert.Equal(t, in.DType, out.DType)
			assert.Equal(t, in.Shape, out.Shape)
			assert.Equal(t, in.Data, out.Data)
		})
	}
	var buf bytes.Buffer
	require.NoError(t, WriteNpy(&buf, &Tensor{DType: Float32, Shape: []int64{3}, Data: make([]byte, 12)}))
	assert.Contains(t, buf.String(), "'shape': (3,)")
}

func npyWith(header string, data []byte) []byte {
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	_ = binary.Write(&b, binary.LittleEndian, uint16(len(header)))
	b.WriteString(header)
	b.Write(data)
	return b.Bytes()
}

func TestNpyBigEndian(t *testing.T) {
	data := []byte{0x01, 0x02, 0xff, 0xfe}
	out, err := ReadNpy(bytes.NewReader(npyWith("{'descr': '>i2', 'fortran_order': False, 'shape': (2,), }\n", data)), 0)
	require.NoError(t, err)
	v, err := ToFloat32(out)
	require.NoError(t, err)
	assert.Equal(t, []float32{258, -2}, v)
}

func TestNpyErrors(t *testing.T) {
	tests := []struct {
		name string
		file []byte
		max  int64
		want string
	}{
		{"not npy", []byte("hello world, not numpy"), 0, "bad magic"},
		{"short", []byte("\x93NUM"), 0, "reading preamble"},
		{"version", append([]byte("\x93NUMPY\x09\x00"), 0, 0), 0, "unsupported format version 9.0"},
		{"object", npyWith("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", nil), 0, "no supported 'descr'"},
		{"complex", npyWith("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", nil), 0, "unsupported element type \"<c8\""},
		{"fortran", npyWith("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", make([]byte, 4)), 0, "Fortran-ordered"},
		{"truncated", npyWith("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", make([]byte, 5)), 0, "truncated"},
		{"huge claim", npyWith("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }", nil), 1 << 20, "exceeds the limit"},
		{"bad dim", npyWith("{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }", nil), 0, "bad dimension"},
		{"overflow", npyWith("{'descr': '<f4', 'fortran_order': False, 'shape': (9999999999, 9999999999), }", nil), 0, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadNpy(bytes.NewReader(tt.file), tt.max)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func FuzzReadNpy(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteNpy(&buf, FromFloat32("x", []int64{2, 2}, []float32{1, 2, 3, 4}))
	f.Add(buf.Bytes())
	f.Add(npyWith("{'descr': '>i2', 'fortran_order': False, 'shape': (2,), }\n", []byte{1, 2, 3, 4}))
	f.Add(npyWith("{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n", []byte{1, 2, 3, 4}))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := ReadNpy(bytes.NewReader(data), 1<<20)
		if err != nil {
			return
		}
		n, err := NumElements(out.Shape)
		if err != nil || int64(len(out.Data)) != n*int64(out.DType.Size()) {
			t.Fatalf("accepted inconsistent array: shape %v, %d bytes of %s", out.Shape, len(out.Data), out.DType)
		}
	})
}
