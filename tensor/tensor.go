// Package tensor holds the dense, little-endian tensors that flow between the
// API, the engine and the CLI, their element types, and the .npy file format.
package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unsafe"
)

// DType is an element type. The names are NumPy's, which is what users of
// medical imaging stacks read and write every day.
type DType string

// The element types voxserve accepts.
const (
	Float32 DType = "float32"
	Float16 DType = "float16"
	Float64 DType = "float64"
	Int8    DType = "int8"
	Uint8   DType = "uint8"
	Int16   DType = "int16"
	Uint16  DType = "uint16"
	Int32   DType = "int32"
	Int64   DType = "int64"
	Bool    DType = "bool"
)

var sizes = map[DType]int{
	Float32: 4, Float16: 2, Float64: 8, Int8: 1, Uint8: 1,
	Int16: 2, Uint16: 2, Int32: 4, Int64: 8, Bool: 1,
}

// DTypes lists the supported element types, for error messages and docs.
func DTypes() []DType {
	return []DType{Float32, Float16, Float64, Int8, Uint8, Int16, Uint16, Int32, Int64, Bool}
}

// ParseDType checks a type name.
func ParseDType(s string) (DType, error) {
	d := DType(s)
	if _, ok := sizes[d]; !ok {
		names := make([]string, 0, len(sizes))
		for _, t := range DTypes() {
			names = append(names, string(t))
		}
		return "", fmt.Errorf("unknown data type %q (want one of %s)", s, strings.Join(names, ", "))
	}
	return d, nil
}

// Size is the width of one element in bytes, 0 for an unknown type.
func (d DType) Size() int { return sizes[d] }

// Tensor is a dense row-major tensor with little-endian elements.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte
	// Device, when set, holds the bytes in an accelerator's memory instead
	// of Data (then nil): a model input the GPU's preprocessing left where
	// the model's bound inputs are copied from.
	Device *DeviceBytes
}

// DeviceBytes are Len bytes at Addr in an accelerator's memory. Host is
// the same bytes when that memory is the host's (a test double of a GPU).
type DeviceBytes struct {
	Addr uintptr
	Len  int
	Host []byte
}

// ByteLen is the length of the tensor's bytes, wherever they are.
func (t *Tensor) ByteLen() int {
	if t.Device != nil {
		return t.Device.Len
	}
	return len(t.Data)
}

// MaxElements caps any shape's element count so that size arithmetic never
// overflows and no claim in a request can make us allocate without bound.
const MaxElements = 1 << 34

// NumElements returns the product of the dimensions, or an error when a
// dimension is negative or the product is implausibly large.
func NumElements(shape []int64) (int64, error) {
	n := int64(1)
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("dimension %d is %d; dimensions must be >= 0", i, d)
		}
		if d != 0 && n > MaxElements/d {
			return 0, fmt.Errorf("shape %v has more than %d elements", shape, int64(MaxElements))
		}
		n *= d
	}
	return n, nil
}

// Check verifies that the data length matches the shape and element type.
func (t *Tensor) Check() error {
	size := t.DType.Size()
	if size == 0 {
		_, err := ParseDType(string(t.DType))
		return err
	}
	n, err := NumElements(t.Shape)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("shape %v has no elements", t.Shape)
	}
	if want := n * int64(size); int64(t.ByteLen()) != want {
		return fmt.Errorf("data is %d bytes but shape %v of %s needs %d", t.ByteLen(), t.Shape, t.DType, want)
	}
	return nil
}

// Float32s views a float32 tensor's data as float32 values (a copy).
func (t *Tensor) Float32s() ([]float32, error) {
	if t.DType != Float32 {
		return nil, fmt.Errorf("tensor %q is %s, not float32", t.Name, t.DType)
	}
	return ToFloat32(t)
}

// FromFloat32 builds a float32 tensor.
func FromFloat32(name string, shape []int64, v []float32) *Tensor {
	data := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(x))
	}
	return &Tensor{Name: name, DType: Float32, Shape: append([]int64(nil), shape...), Data: data}
}

// ShapeString formats a shape the way error messages show it, with -1 as "?".
func ShapeString(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		if d < 0 {
			parts[i] = "?"
		} else {
			parts[i] = fmt.Sprint(d)
		}
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// ToFloat32 converts a tensor of any numeric type to float32 values.
func ToFloat32(t *Tensor) ([]float32, error) {
	if t.Device != nil {
		return nil, fmt.Errorf("tensor %q is in an accelerator's memory", t.Name)
	}
	if err := t.Check(); err != nil {
		return nil, err
	}
	d := t.Data
	n := len(d) / t.DType.Size()
	out := make([]float32, n)
	switch t.DType {
	case Float32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:]))
		}
	case Float64:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:])))
		}
	case Float16:
		for i := range out {
			out[i] = HalfToFloat32(binary.LittleEndian.Uint16(d[2*i:]))
		}
	case Int16:
		for i := range out {
			out[i] = float32(int16(binary.LittleEndian.Uint16(d[2*i:])))
		}
	case Uint16:
		for i := range out {
			out[i] = float32(binary.LittleEndian.Uint16(d[2*i:]))
		}
	case Int8:
		for i := range out {
			out[i] = float32(int8(d[i]))
		}
	case Uint8, Bool:
		for i := range out {
			out[i] = float32(d[i])
		}
	case Int32:
		for i := range out {
			out[i] = float32(int32(binary.LittleEndian.Uint32(d[4*i:])))
		}
	default:
		return nil, fmt.Errorf("cannot convert %s to float32", t.DType)
	}
	return out, nil
}

// Float32View returns a float32 tensor's data as []float32 without copying
// when its bytes are 4-byte aligned (Go allocations are), else a copy. The
// view aliases t.Data: callers must not write to it unless they own t.
func Float32View(t *Tensor) ([]float32, bool, error) {
	if t.DType != Float32 || t.Device != nil {
		v, err := ToFloat32(t)
		return v, false, err
	}
	if err := t.Check(); err != nil {
		return nil, false, err
	}
	if uintptr(unsafe.Pointer(unsafe.SliceData(t.Data)))%4 != 0 {
		v, err := ToFloat32(t)
		return v, false, err
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(t.Data))), len(t.Data)/4), true, nil
}

// ViewFloat32 makes a float32 tensor whose data aliases v (no copy); v must
// not change while the tensor is in use.
func ViewFloat32(name string, shape []int64, v []float32) *Tensor {
	var data []byte
	if len(v) > 0 {
		data = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
	}
	return &Tensor{Name: name, DType: Float32, Shape: append([]int64(nil), shape...), Data: data}
}
