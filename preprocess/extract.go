package preprocess

import (
	"fmt"
	"math"

	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// Channels is a multi-channel volume, channel-major: V[c*NZ*NY*NX + voxel].
type Channels struct {
	C, NX, NY, NZ int
	V             []float32
}

func (c *Channels) vox() int { return c.NX * c.NY * c.NZ }

// SlicesTensor lays the volume out as a batch of 2D slices,
// [NZ, C, NY, NX], into out (len NZ*C*NY*NX).
func SlicesTensor(ch *Channels, out []float32) {
	plane := ch.NX * ch.NY
	n := ch.vox()
	par.Range(ch.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			for c := 0; c < ch.C; c++ {
				copy(out[(k*ch.C+c)*plane:(k*ch.C+c+1)*plane], ch.V[c*n+k*plane:c*n+(k+1)*plane])
			}
		}
	})
}

// SlabsTensor lays the volume out as 2.5D slabs: for each slice k, the
// slices k-r..k+r (clamped at the ends) of every channel, giving
// [NZ, C*(2r+1), NY, NX] with channel index c*(2r+1) + (offset+r).
func SlabsTensor(ch *Channels, r int, out []float32) {
	plane := ch.NX * ch.NY
	n := ch.vox()
	depth := 2*r + 1
	par.Range(ch.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			for c := 0; c < ch.C; c++ {
				for o := -r; o <= r; o++ {
					src := min(max(k+o, 0), ch.NZ-1)
					dst := (k*ch.C*depth + c*depth + o + r) * plane
					copy(out[dst:dst+plane], ch.V[c*n+src*plane:c*n+(src+1)*plane])
				}
			}
		}
	})
}

// cropGeometry is where CropOrPad takes an nx by ny plane of geometry geo
// to rows by cols: centred, offsets negative where it pads before, and the
// origin moved to the new first voxel.
func cropGeometry(geo volume.Geometry, nx, ny, rows, cols int) (offX, offY int, out volume.Geometry) {
	offX, offY = (nx-cols)/2, (ny-rows)/2
	out = geo
	d := geo.Direction
	for c := 0; c < 3; c++ {
		out.Origin[c] += float64(offX)*geo.Spacing[0]*d[c] + float64(offY)*geo.Spacing[1]*d[3+c]
	}
	return offX, offY, out
}

// SlabsCropped is CropOrPad on every channel followed by SlabsTensor, as
// lay describes them, in one pass: the reference of
// ResidentAccelerator.PrepareSlabs. It returns [nz, C*(2R+1), Rows, Cols].
func SlabsCropped(ch *Channels, lay SlabLayout) []float32 {
	plane := lay.Rows * lay.Cols
	depth := 2*lay.R + 1
	out := make([]float32, ch.NZ*ch.C*depth*plane)
	par.Range(ch.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			for c := 0; c < ch.C; c++ {
				for o := -lay.R; o <= lay.R; o++ {
					s := min(max(k+o, 0), ch.NZ-1)
					src := ch.V[(c*ch.NZ+s)*ch.NX*ch.NY : (c*ch.NZ+s+1)*ch.NX*ch.NY]
					dst := out[(k*ch.C*depth+c*depth+o+lay.R)*plane:][:plane]
					for j := 0; j < lay.Rows; j++ {
						sy := j + lay.OffY
						for i := 0; i < lay.Cols; i++ {
							sx := i + lay.OffX
							v := lay.Pad
							if sy >= 0 && sy < ch.NY && sx >= 0 && sx < ch.NX {
								v = src[sy*ch.NX+sx]
							}
							dst[j*lay.Cols+i] = v
						}
					}
				}
			}
		}
	})
	return out
}

// PatchLayout is how PrepareResident lays the channels out as sliding-
// window patches: Patches (Patches' order) of Size (x, y, z), Pad outside
// the volume, float16 when Half.
type PatchLayout struct {
	Patches []Patch
	Size    [3]int
	Pad     float32
	Half    bool
}

// PatchesTensor extracts every patch of lay from ch, [P, C, pz, py, px].
func PatchesTensor(ch *Channels, lay PatchLayout) []float32 {
	per := ch.C * lay.Size[0] * lay.Size[1] * lay.Size[2]
	data := make([]float32, len(lay.Patches)*per)
	par.Range(len(lay.Patches), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			ExtractPatch(ch, lay.Patches[i], lay.Size, lay.Pad, data[i*per:(i+1)*per])
		}
	})
	return data
}

// Bytes are v (PatchesTensor's values) as the model input holds them.
func (lay PatchLayout) Bytes(v []float32) []byte { return SlabLayout{Half: lay.Half}.Bytes(v) }

// Bytes are v (SlabsCropped's values) as the model input holds them:
// float32, or float16 when lay.Half; little-endian.
func (lay SlabLayout) Bytes(v []float32) []byte {
	if lay.Half {
		return tensor.FromFloat32Half("", nil, v).Data
	}
	return tensor.FromFloat32("", nil, v).Data
}

// PatchStarts returns the start indices of patches of size p covering n
// voxels with the given overlap fraction (0 <= overlap < 1): evenly spaced,
// the last one ending at n. A volume smaller than the patch gets one start
// at 0 (the patch is padded).
func PatchStarts(n, p int, overlap float64) []int {
	if n <= p {
		return []int{0}
	}
	step := max(1, int(math.Floor(float64(p)*(1-overlap))))
	count := (n-p+step-1)/step + 1
	starts := make([]int, count)
	for i := range starts {
		starts[i] = min(i*step, n-p)
	}
	return starts
}

// Patch is one sliding-window position, in voxels (x, y, z).
type Patch struct {
	Start [3]int
}

// Patches lists every sliding-window position over a volume, z outermost.
func Patches(size [3]int, patch [3]int, overlap float64) []Patch {
	xs := PatchStarts(size[0], patch[0], overlap)
	ys := PatchStarts(size[1], patch[1], overlap)
	zs := PatchStarts(size[2], patch[2], overlap)
	out := make([]Patch, 0, len(xs)*len(ys)*len(zs))
	for _, z := range zs {
		for _, y := range ys {
			for _, x := range xs {
				out = append(out, Patch{[3]int{x, y, z}})
			}
		}
	}
	return out
}

// ExtractPatch copies one patch of every channel into out
// ([C, pz, py, px]); voxels beyond the volume take pad.
func ExtractPatch(ch *Channels, p Patch, size [3]int, pad float32, out []float32) {
	n := ch.vox()
	pv := size[0] * size[1] * size[2]
	for c := 0; c < ch.C; c++ {
		for k := 0; k < size[2]; k++ {
			z := p.Start[2] + k
			for j := 0; j < size[1]; j++ {
				y := p.Start[1] + j
				dst := out[c*pv+(k*size[1]+j)*size[0] : c*pv+(k*size[1]+j+1)*size[0]]
				if z >= ch.NZ || y >= ch.NY {
					for i := range dst {
						dst[i] = pad
					}
					continue
				}
				row := ch.V[c*n+(z*ch.NY+y)*ch.NX:]
				w := min(size[0], ch.NX-p.Start[0])
				copy(dst[:w], row[p.Start[0]:p.Start[0]+w])
				for i := w; i < size[0]; i++ {
					dst[i] = pad
				}
			}
		}
	}
}

// GaussianMap is the importance map that weights a patch's predictions by
// distance from its centre when patches are stitched (sigma = size/8, as in
// nnU-Net and MONAI), normalized to a maximum of 1 and floored above 0 so
// every voxel keeps some weight.
func GaussianMap(size [3]int) []float32 {
	out := make([]float32, size[0]*size[1]*size[2])
	var g [3][]float64
	for a := 0; a < 3; a++ {
		sigma := float64(size[a]) / 8
		c := float64(size[a]-1) / 2
		g[a] = make([]float64, size[a])
		for i := range g[a] {
			d := float64(i) - c
			g[a][i] = math.Exp(-d * d / (2 * sigma * sigma))
		}
	}
	peak := g[0][(size[0]-1)/2] * g[1][(size[1]-1)/2] * g[2][(size[2]-1)/2]
	var floor float32 = math.MaxFloat32
	for k := 0; k < size[2]; k++ {
		for j := 0; j < size[1]; j++ {
			for i := 0; i < size[0]; i++ {
				v := float32(g[0][i] * g[1][j] * g[2][k] / peak)
				out[(k*size[1]+j)*size[0]+i] = v
				if v > 0 && v < floor {
					floor = v
				}
			}
		}
	}
	for i, v := range out {
		if v < floor {
			out[i] = floor
		}
	}
	return out
}

// Aggregator stitches patch predictions into a volume: each voxel is the
// Gaussian-weighted mean of the patches that cover it.
type Aggregator struct {
	C      int
	Size   [3]int // volume x, y, z
	Patch  [3]int
	weight []float32
	sum    []float32
	wsum   []float32
}

// NewAggregator allocates the accumulators once per request.
func NewAggregator(channels int, size, patch [3]int) *Aggregator {
	n := size[0] * size[1] * size[2]
	return &Aggregator{C: channels, Size: size, Patch: patch, weight: GaussianMap(patch),
		sum: make([]float32, channels*n), wsum: make([]float32, n)}
}

// Add accumulates one patch's prediction ([C, pz, py, px]) at p.
func (a *Aggregator) Add(p Patch, pred []float32) error {
	pv := a.Patch[0] * a.Patch[1] * a.Patch[2]
	if len(pred) != a.C*pv {
		return fmt.Errorf("patch prediction has %d values, want %d", len(pred), a.C*pv)
	}
	n := a.Size[0] * a.Size[1] * a.Size[2]
	for k := 0; k < a.Patch[2]; k++ {
		z := p.Start[2] + k
		if z >= a.Size[2] {
			break
		}
		for j := 0; j < a.Patch[1]; j++ {
			y := p.Start[1] + j
			if y >= a.Size[1] {
				break
			}
			for i := 0; i < a.Patch[0]; i++ {
				x := p.Start[0] + i
				if x >= a.Size[0] {
					break
				}
				w := a.weight[(k*a.Patch[1]+j)*a.Patch[0]+i]
				v := (z*a.Size[1]+y)*a.Size[0] + x
				a.wsum[v] += w
				for c := 0; c < a.C; c++ {
					a.sum[c*n+v] += w * pred[c*pv+(k*a.Patch[1]+j)*a.Patch[0]+i]
				}
			}
		}
	}
	return nil
}

// Result returns the stitched channels ([C, z, y, x]); voxels no patch
// covered are 0.
func (a *Aggregator) Result() *Channels {
	n := a.Size[0] * a.Size[1] * a.Size[2]
	for c := 0; c < a.C; c++ {
		for v := 0; v < n; v++ {
			if a.wsum[v] > 0 {
				a.sum[c*n+v] /= a.wsum[v]
			}
		}
	}
	return &Channels{C: a.C, NX: a.Size[0], NY: a.Size[1], NZ: a.Size[2], V: a.sum}
}

// CropOrPad centres g's rows and columns in a rows x cols plane: larger
// planes are cropped, smaller ones padded with pad. The geometry's origin
// moves with the first voxel, so positions are preserved.
func CropOrPad(g *Grid, rows, cols int, pad float32) *Grid {
	if g.NY == rows && g.NX == cols {
		return g
	}
	offX, offY, geo := cropGeometry(g.Geometry, g.NX, g.NY, rows, cols)
	out := &Grid{NX: cols, NY: rows, NZ: g.NZ, Geometry: geo, V: make([]float32, cols*rows*g.NZ)}
	par.Range(g.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			for j := 0; j < rows; j++ {
				sy := j + offY
				dst := out.V[(k*rows+j)*cols : (k*rows+j+1)*cols]
				for i := range dst {
					sx := i + offX
					if sy < 0 || sy >= g.NY || sx < 0 || sx >= g.NX {
						dst[i] = pad
					} else {
						dst[i] = g.V[(k*g.NY+sy)*g.NX+sx]
					}
				}
			}
		}
	})
	return out
}

// ToGrid resamples src onto target's geometry and size, in physical space:
// each target voxel takes the source value at its patient position. It is
// the inverse mapping of model outputs (on the model's grid) onto the
// source grid, whatever resampling, cropping or reorientation lies between.
// Positions outside the source take the edge value for Linear and 0 for
// Nearest.
func ToGrid(src *Grid, target volume.Geometry, size [3]int, interp Interp) *Grid {
	out := &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: target, V: make([]float32, size[0]*size[1]*size[2])}
	ToGridInto(src, out, interp)
	return out
}

// ToGridInto is ToGrid writing into out, whose geometry, size and values
// (len NX*NY*NZ, zeroed where Nearest may leave voxels untouched) are set.
func ToGridInto(src, out *Grid, interp Interp) {
	target, size := out.Geometry, [3]int{out.NX, out.NY, out.NZ}
	off, m := GridMap(src.Geometry, target)
	n := [3]int{src.NX, src.NY, src.NZ}
	if t, ok := separableMap(off, m, size, n, interp); ok && separableToGrid {
		toGridSeparable(src, out, t)
		return
	}
	par.Range(size[2], func(lo, hi int) {
		for k := lo; k < hi; k++ {
			for j := 0; j < size[1]; j++ {
				for i := 0; i < size[0]; i++ {
					var lo3, hi3 [3]int
					var w [3]float32
					inside := true
					for a := 0; a < 3; a++ {
						x := off[a] + float64(i)*m[a][0] + float64(j)*m[a][1] + float64(k)*m[a][2]
						if interp == Nearest {
							r := int(math.Floor(x + 0.5))
							if r < 0 || r >= n[a] {
								inside = false
								break
							}
							lo3[a], hi3[a] = r, r
							continue
						}
						x = math.Min(math.Max(x, 0), float64(n[a]-1))
						f := int(math.Floor(x))
						if f >= n[a]-1 {
							lo3[a], hi3[a] = n[a]-1, n[a]-1
						} else {
							lo3[a], hi3[a], w[a] = f, f+1, float32(x-float64(f))
						}
					}
					if !inside {
						continue
					}
					x0, x1, y0, y1, z0, z1 := lo3[0], hi3[0], lo3[1], hi3[1], lo3[2], hi3[2]
					c00 := src.at(x0, y0, z0) + (src.at(x1, y0, z0)-src.at(x0, y0, z0))*w[0]
					c01 := src.at(x0, y1, z0) + (src.at(x1, y1, z0)-src.at(x0, y1, z0))*w[0]
					c10 := src.at(x0, y0, z1) + (src.at(x1, y0, z1)-src.at(x0, y0, z1))*w[0]
					c11 := src.at(x0, y1, z1) + (src.at(x1, y1, z1)-src.at(x0, y1, z1))*w[0]
					c0 := c00 + (c01-c00)*w[1]
					c1 := c10 + (c11-c10)*w[1]
					out.V[(k*size[1]+j)*size[0]+i] = c0 + (c1-c0)*w[2]
				}
			}
		}
	})
}

// GridMap is the affine map from target voxel indices to source
// continuous indices: idx_a = off_a + sum_b t_b * m[a][b].
func GridMap(src, target volume.Geometry) (off [3]float64, m [3][3]float64) {
	sd, td := src.Direction, target.Direction
	for a := 0; a < 3; a++ {
		var dp float64
		for c := 0; c < 3; c++ {
			dp += (target.Origin[c] - src.Origin[c]) * sd[3*a+c]
		}
		off[a] = dp / src.Spacing[a]
		for b := 0; b < 3; b++ {
			var cos float64
			for c := 0; c < 3; c++ {
				cos += td[3*b+c] * sd[3*a+c]
			}
			m[a][b] = target.Spacing[b] * cos / src.Spacing[a]
		}
	}
	return off, m
}

// separableToGrid lets tests compare the separable path with the general one.
var separableToGrid = true

// axisTable is, along one target axis, each index's two source indices,
// the weight of the second, and whether it lies inside the source
// (Nearest leaves outside voxels untouched).
type axisTable struct {
	AxisMap
	inside []bool
}

// separableMap returns per-axis tables when the map takes each target axis
// to the same source axis (scaling, shifting, flipping: no rotation or
// permutation), which is the usual case: then ToGridInto needs no float64
// arithmetic per voxel. The tables hold exactly the values the general
// loop computes, so the result is the same bit for bit.
func separableMap(off [3]float64, m [3][3]float64, size, n [3]int, interp Interp) ([3]axisTable, bool) {
	var t [3]axisTable
	for a := 0; a < 3; a++ {
		for b := 0; b < 3; b++ {
			if a != b && m[a][b] != 0 {
				return t, false
			}
		}
	}
	for a := 0; a < 3; a++ {
		t[a] = axisTable{AxisMap{I0: make([]int32, size[a]), I1: make([]int32, size[a]), W: make([]float32, size[a])}, make([]bool, size[a])}
		for i := 0; i < size[a]; i++ {
			// The general loop's sum, with the other axes' zero terms.
			var x float64
			switch a {
			case 0:
				x = off[a] + float64(i)*m[a][0] + 0*m[a][1] + 0*m[a][2]
			case 1:
				x = off[a] + 0*m[a][0] + float64(i)*m[a][1] + 0*m[a][2]
			default:
				x = off[a] + 0*m[a][0] + 0*m[a][1] + float64(i)*m[a][2]
			}
			if interp == Nearest {
				r := int(math.Floor(x + 0.5))
				if r >= 0 && r < n[a] {
					t[a].I0[i], t[a].I1[i], t[a].inside[i] = int32(r), int32(r), true
				}
				continue
			}
			t[a].inside[i] = true
			x = math.Min(math.Max(x, 0), float64(n[a]-1))
			f := int(math.Floor(x))
			if f >= n[a]-1 {
				t[a].I0[i], t[a].I1[i] = int32(n[a]-1), int32(n[a]-1)
			} else {
				t[a].I0[i], t[a].I1[i], t[a].W[i] = int32(f), int32(f+1), float32(x-float64(f))
			}
		}
	}
	return t, true
}

func toGridSeparable(src, out *Grid, t [3]axisTable) {
	tx, ty, tz := t[0], t[1], t[2]
	par.Range(out.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			if !tz.inside[k] {
				continue
			}
			z0, z1, wz := int(tz.I0[k]), int(tz.I1[k]), tz.W[k]
			for j := 0; j < out.NY; j++ {
				if !ty.inside[j] {
					continue
				}
				y0, y1, wy := int(ty.I0[j]), int(ty.I1[j]), ty.W[j]
				trilinearRow(out.row(j, k), src, z0, z1, y0, y1, tx.AxisMap, tx.inside, wy, wz)
			}
		}
	})
}
