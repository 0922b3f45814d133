package postprocess

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/volume"
)

// Measurement is one value derived from a label map and its geometry.
type Measurement struct {
	Name  string
	Label string
	Value float64
	Unit  string // UCUM
	// Type is the bundle's measurement type (volume, max_axial_area, ...).
	Type string
}

// Study is what measurements need besides the label map: the geometry of
// the grid the mask lies on and the source values (HU for CT) on it.
type Study struct {
	Geometry volume.Geometry
	// Values are the source voxels, z-major, or nil.
	Values []float32
	// Stored, when Values is nil, are the source voxels as int16 stored
	// values, read as Stored*Slope + Intercept (float32 arithmetic, as
	// DICOM decoding computes them): a volume kept int16 for the GPU.
	Stored           []int16
	Slope, Intercept float32
	Modality         string
}

// voxels is how many source voxels the study has (0: none given).
func (st *Study) voxels() int {
	if st.Values != nil {
		return len(st.Values)
	}
	return len(st.Stored)
}

// value is source voxel i in the modality's units.
func (st *Study) value(i int) float32 {
	if st.Values != nil {
		return st.Values[i]
	}
	return float32(st.Stored[i])*st.Slope + st.Intercept
}

// RemoveSmallComponents zeroes the 26-connected components of each label
// smaller than minVoxels, in place, and returns how many it removed.
func RemoveSmallComponents(lab []uint8, dims [3]int, minVoxels int) int {
	if minVoxels <= 1 {
		return 0
	}
	nx, ny, nz := dims[2], dims[1], dims[0]
	seen := make([]uint64, (len(lab)+63)/64) // a bitset: an eighth of a []bool to clear
	isSeen := func(v int) bool { return seen[v>>6]&(1<<(v&63)) != 0 }
	mark := func(v int) { seen[v>>6] |= 1 << (v & 63) }
	removed := 0
	var stack, comp []int
	for start := 0; start < len(lab); start++ {
		if start&7 == 0 && start+8 <= len(lab) && binary.LittleEndian.Uint64(lab[start:]) == 0 {
			start += 7 // eight background voxels at once
			continue
		}
		if lab[start] == 0 || isSeen(start) {
			continue
		}
		l := lab[start]
		stack = append(stack[:0], start)
		comp = comp[:0]
		mark(start)
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
						w := (zz*ny+yy)*nx + xx
						if lab[w] == l && !isSeen(w) {
							mark(w)
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

// measure computes an output's declared measurements on its label map,
// from one pass over it (gather).
func measure(decl bundle.Output, m *Mask, st *Study) ([]Measurement, error) {
	dims := maskDims(m)
	if n := dims[0] * dims[1] * dims[2]; n != len(m.Voxels) {
		return nil, fmt.Errorf("mask %q has %d voxels for dims %v", decl.Name, len(m.Voxels), m.Dims)
	}
	g := st.Geometry
	value := func(name string) (int, error) {
		for i, l := range decl.Labels {
			if l.Name == name {
				return i + 1, nil
			}
		}
		return 0, fmt.Errorf("output %q has no label %q", decl.Name, name)
	}
	var values func(int) float32
	extent := false
	for _, ms := range decl.Measurements {
		switch ms.Type {
		case "mean_intensity":
			if st.voxels() != len(m.Voxels) {
				return nil, fmt.Errorf("measurement %q needs the source values on the mask's grid", ms.Name)
			}
			values = st.value
		case "craniocaudal_length":
			extent = true
		}
	}
	stats := gather(m.Voxels, dims, len(decl.Labels), values, st, extent)
	var out []Measurement
	for _, ms := range decl.Measurements {
		lab, err := value(ms.Label)
		if err != nil {
			return nil, err
		}
		res := Measurement{Name: ms.Name, Label: ms.Label, Type: ms.Type}
		t := stats.total(lab)
		switch ms.Type {
		case "volume":
			res.Value, res.Unit = float64(t.count)*g.Spacing[0]*g.Spacing[1]*g.Spacing[2]/1000, "mL"
		case "max_axial_area":
			res.Value, res.Unit = float64(stats.maxSlice(lab))*g.Spacing[0]*g.Spacing[1]/100, "cm2"
		case "craniocaudal_length":
			// Extent along the patient's S axis of the voxels, each voxel
			// contributing its own extent along S.
			if t.hi >= t.lo {
				d := g.Direction
				ext := g.Spacing[0]*math.Abs(d[2]) + g.Spacing[1]*math.Abs(d[5]) + g.Spacing[2]*math.Abs(d[8])
				res.Value = (t.hi - t.lo + ext) / 10
			}
			res.Unit = "cm"
		case "mean_intensity":
			if t.count > 0 {
				res.Value = t.sum / float64(t.count)
			}
			res.Unit = "{intensity}"
			if st.Modality == "CT" {
				res.Unit = "[hnsf'U]"
			}
		case "side_fraction":
			right, err := value(ms.Right)
			if err != nil {
				return nil, err
			}
			left, err := value(ms.Left)
			if err != nil {
				return nil, err
			}
			res.Value, res.Unit = sideFraction(t, stats.total(right), stats.total(left)), "1"
		default:
			return nil, fmt.Errorf("unknown measurement type %q", ms.Type)
		}
		out = append(out, res)
	}
	return out, nil
}

// sideFraction is |num| / (|num| + |lung on num's side|): the side is the
// lung label whose centroid is nearer the numerator's.
func sideFraction(num, right, left sliceStats) float64 {
	if num.count == 0 {
		return 0
	}
	centroid := func(s sliceStats) (float64, float64) {
		n := math.Max(float64(s.count), 1)
		return float64(s.sumX) / n, float64(s.sumY) / n
	}
	nxc, nyc := centroid(num)
	rx, ry := centroid(right)
	lx, ly := centroid(left)
	side := float64(right.count)
	if left.count > 0 && (right.count == 0 || math.Hypot(nxc-lx, nyc-ly) < math.Hypot(nxc-rx, nyc-ry)) {
		side = float64(left.count)
	}
	return float64(num.count) / (float64(num.count) + side)
}

// maskDims is the mask's [z, y, x]; a 2D mask is one slice.
func maskDims(m *Mask) [3]int {
	d := m.Dims
	switch len(d) {
	case 2:
		return [3]int{1, int(d[0]), int(d[1])}
	case 3:
		return [3]int{int(d[0]), int(d[1]), int(d[2])}
	}
	n := 1
	for _, x := range d[:max(len(d)-2, 0)] {
		n *= int(x)
	}
	return [3]int{n, int(d[len(d)-2]), int(d[len(d)-1])}
}
