// Package preprocess is the CPU reference of voxserve's image preprocessing:
// reorientation, resampling in physical space, windowing to channels,
// normalization, and the slicing of a volume into model inputs (2D slices,
// 2.5D slabs, 3D sliding-window patches) with the inverse mapping of model
// outputs back onto the source grid. The CUDA kernels must match it.
//
// Volumes here are float32, z-major: index (k*ny + j)*nx + i for voxel
// (i column, j row, k slice).
package preprocess

import (
	"fmt"
	"math"

	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/volume"
)

// Grid is a float32 volume on a geometry: the working form of a volume.
type Grid struct {
	NX, NY, NZ int
	Geometry   volume.Geometry
	V          []float32
	// shared marks V as a view of someone else's data: copy before writing.
	shared bool
}

// FromVolume makes a Grid of a volume's values in its modality's units: a
// view of float32 data (no copy), a float32 copy of anything else.
func FromVolume(v *volume.Volume) (*Grid, error) {
	f, shared, err := v.Values()
	if err != nil {
		return nil, err
	}
	return &Grid{NX: int(v.Dims[2]), NY: int(v.Dims[1]), NZ: int(v.Dims[0]), Geometry: v.Geometry, V: f, shared: shared}, nil
}

// owned returns g's values, copied first if they are a view.
func (g *Grid) owned() []float32 {
	if g.shared {
		g.V = append([]float32(nil), g.V...)
		g.shared = false
	}
	return g.V
}

// Len is the number of voxels.
func (g *Grid) Len() int { return g.NX * g.NY * g.NZ }

func (g *Grid) at(i, j, k int) float32 { return g.V[(k*g.NY+j)*g.NX+i] }

// Window maps Hounsfield units to [0, 1]: center - width/2 -> 0,
// center + width/2 -> 1, clipped (MONAI's ScaleIntensityRange with clip).
type Window struct {
	Name   string
	Center float64
	Width  float64
}

// Apply windows one value.
func (w Window) Apply(v float32) float32 {
	lo := float32(w.Center - w.Width/2)
	x := (v - lo) / float32(w.Width)
	return min(max(x, 0), 1)
}

// Windows turns a grid into len(ws) channels, channel-major: out holds
// c*Len() + voxel. out must have len(ws)*g.Len() values.
func Windows(g *Grid, ws []Window, out []float32) {
	n := g.Len()
	par.Range(n, func(lo, hi int) {
		for c, w := range ws {
			dst := out[c*n : (c+1)*n]
			low, scale := float32(w.Center-w.Width/2), 1/float32(w.Width)
			for i := lo; i < hi; i++ {
				x := (g.V[i] - low) * scale
				dst[i] = min(max(x, 0), 1)
			}
		}
	})
}

// ClipScale maps [aMin, aMax] to [bMin, bMax] linearly, clipping outside, in place.
func ClipScale(v []float32, aMin, aMax, bMin, bMax float32) {
	scale := (bMax - bMin) / (aMax - aMin)
	par.Range(len(v), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x := min(max(v[i], aMin), aMax)
			v[i] = (x-aMin)*scale + bMin
		}
	})
}

// ZScore normalizes v in place to zero mean and unit variance (float64
// accumulation); a constant input becomes zeros.
func ZScore(v []float32) (mean, std float64) {
	var sum, sq float64
	for _, x := range v {
		sum += float64(x)
	}
	mean = sum / float64(len(v))
	for _, x := range v {
		d := float64(x) - mean
		sq += d * d
	}
	std = math.Sqrt(sq / float64(len(v)))
	m, inv := float32(mean), float32(0)
	if std > 0 {
		inv = float32(1 / std)
	}
	par.Range(len(v), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			v[i] = (v[i] - m) * inv
		}
	})
	return mean, std
}

// Interp selects the resampling kernel.
type Interp int

const (
	// Linear is trilinear interpolation, for images and probabilities.
	Linear Interp = iota
	// Nearest keeps values as they are, for label maps.
	Nearest
)

// ResampleSize is the output size along an axis of n voxels at spacing
// from, resampled to spacing to: round(n * from / to), at least 1.
func ResampleSize(n int, from, to float64) int {
	return max(1, int(math.Round(float64(n)*from/to)))
}

// Resample returns g on a grid with the same origin and direction and the
// given spacing (0 keeps an axis' spacing) and size. Output voxel i sits at
// origin + i*spacing along each axis, so the input's continuous index is
// i*to/from; positions beyond the last voxel take the edge value.
func Resample(g *Grid, spacing [3]float64, size [3]int, interp Interp) *Grid {
	for a := 0; a < 3; a++ {
		if spacing[a] == 0 {
			spacing[a] = g.Geometry.Spacing[a]
		}
	}
	out := &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: g.Geometry}
	out.Geometry.Spacing = spacing
	out.V = make([]float32, out.Len())
	ResampleInto(g, out, interp)
	return out
}

// AxisMap holds, for each output index along an axis, the two input
// indices and the weight of the second: the whole of a separable
// resampling's geometry. The CUDA kernels take the same tables, so that
// both sides interpolate with identical weights.
type AxisMap struct {
	I0, I1 []int32
	W      []float32
}

// NewAxisMap maps nOut output voxels onto nIn input voxels whose spacing
// is ratio times smaller: output o sits at input index o*ratio; beyond the
// last voxel the edge value is taken.
func NewAxisMap(nOut, nIn int, ratio float64, interp Interp) AxisMap {
	m := AxisMap{I0: make([]int32, nOut), I1: make([]int32, nOut), W: make([]float32, nOut)}
	for o := 0; o < nOut; o++ {
		x := float64(o) * ratio
		if interp == Nearest {
			i := int32(min(int(math.Floor(x+0.5)), nIn-1))
			m.I0[o], m.I1[o] = i, i
			continue
		}
		i := int(math.Floor(x))
		if i >= nIn-1 {
			m.I0[o], m.I1[o] = int32(nIn-1), int32(nIn-1)
			continue
		}
		m.I0[o], m.I1[o], m.W[o] = int32(i), int32(i+1), float32(x-float64(i))
	}
	return m
}

// ResampleMaps are the three axis maps that take g to out's size and spacing.
func ResampleMaps(g, out *Grid, interp Interp) [3]AxisMap {
	return [3]AxisMap{
		NewAxisMap(out.NX, g.NX, out.Geometry.Spacing[0]/g.Geometry.Spacing[0], interp),
		NewAxisMap(out.NY, g.NY, out.Geometry.Spacing[1]/g.Geometry.Spacing[1], interp),
		NewAxisMap(out.NZ, g.NZ, out.Geometry.Spacing[2]/g.Geometry.Spacing[2], interp),
	}
}

// ResampleInto fills out (whose size and spacing are set) from g; out must
// share g's origin and direction.
func ResampleInto(g, out *Grid, interp Interp) {
	ResampleMapsInto(g, out, ResampleMaps(g, out, interp))
}

// ResampleMapsInto fills out from g through precomputed axis maps.
func ResampleMapsInto(g, out *Grid, m [3]AxisMap) {
	mx, my, mz := m[0], m[1], m[2]
	par.Range(out.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			z0, z1, wz := int(mz.I0[k]), int(mz.I1[k]), mz.W[k]
			for j := 0; j < out.NY; j++ {
				y0, y1, wy := int(my.I0[j]), int(my.I1[j]), my.W[j]
				trilinearRow(out.row(j, k), g, z0, z1, y0, y1, mx, nil, wy, wz)
			}
		}
	})
}

// ResampleMapsIntoI16 is ResampleMapsInto from int16 stored values (nx by
// ny by however many slices) read as v*slope + intercept: only the source
// rows the maps touch are converted, into scratch rows, so a study kept
// int16 is never converted whole. The arithmetic is ResampleMapsInto's on
// the values DICOM decoding would have made, so the result is the same bit
// for bit.
func ResampleMapsIntoI16(src []int16, nx, ny int, slope, intercept float32, out *Grid, m [3]AxisMap) {
	mx, my, mz := m[0], m[1], m[2]
	par.Range(out.NZ, func(lo, hi int) {
		// Four scratch rows make a 2 x 2 grid of (y, z) rows for trilinearRow.
		scratch := &Grid{NX: nx, NY: 2, NZ: 2, V: make([]float32, 4*nx)}
		load := func(dst []float32, y, z int) {
			row := src[(z*ny+y)*nx : (z*ny+y+1)*nx]
			for i, v := range row {
				dst[i] = float32(v)*slope + intercept
			}
		}
		for k := lo; k < hi; k++ {
			z0, z1, wz := int(mz.I0[k]), int(mz.I1[k]), mz.W[k]
			for j := 0; j < out.NY; j++ {
				y0, y1, wy := int(my.I0[j]), int(my.I1[j]), my.W[j]
				load(scratch.row(0, 0), y0, z0)
				load(scratch.row(1, 0), y1, z0)
				load(scratch.row(0, 1), y0, z1)
				load(scratch.row(1, 1), y1, z1)
				trilinearRow(out.row(j, k), scratch, 0, 1, 0, 1, mx, nil, wy, wz)
			}
		}
	})
}

// row is the x row (j, k) of g.
func (g *Grid) row(j, k int) []float32 { return g.V[(k*g.NY+j)*g.NX : (k*g.NY+j+1)*g.NX] }

// trilinearRow fills one output row from the four rows of src around it
// (y0/y1 by z0/z1): along x through mx, skipping indices where inside is
// false when inside is given, then by the y and z weights.
func trilinearRow(row []float32, src *Grid, z0, z1, y0, y1 int, mx AxisMap, inside []bool, wy, wz float32) {
	r00, r01, r10, r11 := src.row(y0, z0), src.row(y1, z0), src.row(y0, z1), src.row(y1, z1)
	for i := range row {
		if inside != nil && !inside[i] {
			continue
		}
		x0, x1, wx := mx.I0[i], mx.I1[i], mx.W[i]
		c00 := r00[x0] + (r00[x1]-r00[x0])*wx
		c01 := r01[x0] + (r01[x1]-r01[x0])*wx
		c10 := r10[x0] + (r10[x1]-r10[x0])*wx
		c11 := r11[x0] + (r11[x1]-r11[x0])*wx
		c0 := c00 + (c01-c00)*wy
		c1 := c10 + (c11-c10)*wy
		row[i] = c0 + (c1-c0)*wz
	}
}

// Reorient permutes and flips g's axes so that its x, y and z axes point
// as nearly as possible along patient L, P and S (DICOM's LPS), without
// resampling. It returns g itself when the grid is already so oriented.
func Reorient(g *Grid) (*Grid, error) {
	perm, flip, err := orientation(g.Geometry.Direction)
	if err != nil {
		return nil, err
	}
	if perm == [3]int{0, 1, 2} && flip == [3]bool{} {
		return g, nil
	}
	return reorient(g, perm, flip), nil
}

// NeedsReorient says whether Reorient would change a volume of geometry g.
func NeedsReorient(g volume.Geometry) bool {
	perm, flip, err := orientation(g.Direction)
	return err != nil || perm != [3]int{0, 1, 2} || flip != [3]bool{}
}

// orientation finds, for each patient axis L, P, S, the volume axis
// closest to it (perm) and whether it runs backwards (flip).
func orientation(d [9]float64) (perm [3]int, flip [3]bool, err error) {
	used := [3]bool{}
	for a := 0; a < 3; a++ { // patient axis L, P, S
		best, bestAbs := -1, 0.0
		for v := 0; v < 3; v++ { // volume axis x, y, z
			if c := math.Abs(d[3*v+a]); !used[v] && c > bestAbs {
				best, bestAbs = v, c
			}
		}
		if best < 0 {
			return perm, flip, fmt.Errorf("direction cosines %v do not span three axes", d)
		}
		used[best] = true
		perm[a], flip[a] = best, d[3*best+a] < 0
	}
	return perm, flip, nil
}

// reorient permutes and flips g's axes.
func reorient(g *Grid, perm [3]int, flip [3]bool) *Grid {
	d := g.Geometry.Direction
	in := [3]int{g.NX, g.NY, g.NZ}
	out := &Grid{NX: in[perm[0]], NY: in[perm[1]], NZ: in[perm[2]]}
	out.V = make([]float32, g.Len())
	geo := volume.Geometry{}
	// The new first voxel is the old voxel at the far end of each flipped axis.
	var first [3]int
	for a := 0; a < 3; a++ {
		v := perm[a]
		geo.Spacing[a] = g.Geometry.Spacing[v]
		sign := 1.0
		if flip[a] {
			first[v] = in[v] - 1
			sign = -1
		}
		for c := 0; c < 3; c++ {
			geo.Direction[3*a+c] = sign * d[3*v+c]
		}
	}
	geo.Origin = g.Geometry.Origin
	for v := 0; v < 3; v++ {
		for c := 0; c < 3; c++ {
			geo.Origin[c] += float64(first[v]) * g.Geometry.Spacing[v] * d[3*v+c]
		}
	}
	out.Geometry = geo
	strides := [3]int{1, g.NX, g.NX * g.NY}
	par.Range(out.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			for j := 0; j < out.NY; j++ {
				for i := 0; i < out.NX; i++ {
					idx := [3]int{i, j, k}
					src := 0
					for a := 0; a < 3; a++ {
						p := idx[a]
						if flip[a] {
							p = in[perm[a]] - 1 - p
						}
						src += p * strides[perm[a]]
					}
					out.V[(k*out.NY+j)*out.NX+i] = g.V[src]
				}
			}
		}
	})
	return out
}
