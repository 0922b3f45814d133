// Package volume is an image volume with its patient-space geometry, the
// unit that DICOM ingestion produces and preprocessing consumes.
package volume

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/tensor"
)

// Geometry places voxels in DICOM's LPS patient frame, in millimetres.
// Axis order is x (columns), y (rows), z (slices).
type Geometry struct {
	Spacing [3]float64
	// Origin is the centre of the first voxel.
	Origin [3]float64
	// Direction holds the x, y and z axis unit vectors, row by row.
	Direction [9]float64
}

// Identity is axis-aligned geometry with 1 mm voxels at the origin.
func Identity() Geometry {
	return Geometry{Spacing: [3]float64{1, 1, 1}, Direction: [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}}
}

// Validate checks that spacing is positive and the direction cosines are an
// orthonormal basis (within 1e-3, the tolerance DICOM writers achieve).
func (g Geometry) Validate() error {
	for i, s := range g.Spacing {
		if !(s > 0) || math.IsInf(s, 0) {
			return fmt.Errorf("spacing[%d] is %g, must be > 0", i, s)
		}
	}
	for i, o := range g.Origin {
		if math.IsNaN(o) || math.IsInf(o, 0) {
			return fmt.Errorf("origin[%d] is %g", i, o)
		}
	}
	d := g.Direction
	for i := 0; i < 3; i++ {
		for j := i; j < 3; j++ {
			dot := d[3*i]*d[3*j] + d[3*i+1]*d[3*j+1] + d[3*i+2]*d[3*j+2]
			want := 0.0
			if i == j {
				want = 1
			}
			if math.IsNaN(dot) || math.Abs(dot-want) > 1e-3 {
				return fmt.Errorf("direction cosines are not orthonormal (axis %d . axis %d = %.4f)", i, j, dot)
			}
		}
	}
	return nil
}

// Volume is a 3D image (a 2D image is one slice) with its geometry and the
// DICOM metadata a bundle needs to accept or refuse it.
type Volume struct {
	// Dims are [slices, rows, columns]; Voxels.Shape equals Dims.
	Dims     [3]int64
	Geometry Geometry
	// Voxels holds the values in their stored type, z-major.
	Voxels tensor.Tensor
	// Rescale, when set, maps the stored values to the modality's units
	// (HU for CT): value = stored*Slope + Intercept, in float32 arithmetic.
	// DICOM volumes keep int16 stored values this way when every slice
	// shares one rescale, so that a GPU reads half the bytes. nil: the
	// values are as stored.
	Rescale  *Rescale
	Modality string
	BodyPart string
}

// Rescale is DICOM's modality LUT as a linear map (Rescale Slope and
// Intercept).
type Rescale struct {
	Slope, Intercept float32
}

// Values returns the voxels in the modality's units as float32: a view of
// float32 data with no rescale (shared true: the caller must not write to
// it), else a converted copy.
func (v *Volume) Values() (values []float32, shared bool, err error) {
	if v.Rescale == nil {
		return tensor.Float32View(&v.Voxels)
	}
	s, ok := v.Int16()
	if !ok {
		return nil, false, fmt.Errorf("a rescaled volume must hold int16 values, not %s", v.Voxels.DType)
	}
	out := make([]float32, len(s))
	slope, icpt := v.Rescale.Slope, v.Rescale.Intercept
	par.RangeGrain(len(s), 1<<20, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i] = float32(s[i])*slope + icpt
		}
	})
	return out, false, nil
}

// Int16 views int16 voxels as []int16 (no copy).
func (v *Volume) Int16() ([]int16, bool) {
	if v.Voxels.DType != tensor.Int16 || len(v.Voxels.Data) < 2 {
		return nil, false
	}
	return unsafe.Slice((*int16)(unsafe.Pointer(unsafe.SliceData(v.Voxels.Data))), len(v.Voxels.Data)/2), true
}

// MaxVoxels bounds a volume's size: 2048 x 2048 x 2048 is far beyond any CT.
const MaxVoxels = 1 << 33

// Validate checks dims, data length and geometry.
func (v *Volume) Validate() error {
	n := int64(1)
	for i, d := range v.Dims {
		if d <= 0 {
			return fmt.Errorf("dims[%d] is %d, must be > 0", i, d)
		}
		if n > MaxVoxels/d {
			return fmt.Errorf("dims %v exceed %d voxels", v.Dims, int64(MaxVoxels))
		}
		n *= d
	}
	v.Voxels.Shape = v.Dims[:]
	if err := v.Voxels.Check(); err != nil {
		return err
	}
	return v.Geometry.Validate()
}

// Float32 returns the voxel values in the modality's units, converted to
// float32 (a copy).
func (v *Volume) Float32() ([]float32, error) {
	if v.Rescale != nil {
		values, _, err := v.Values()
		return values, err
	}
	return tensor.ToFloat32(&v.Voxels)
}
