package postprocess

import (
	"encoding/binary"
	"math"

	"github.com/voxserve/voxserve/internal/par"
)

// labelStats are what every measurement type needs of a label map, per
// label value, gathered in one pass over the map on every core instead of
// a pass per measurement: psoas's eight measurements on a 512 x 512 x 271
// grid took 190 ms on 2 cores that way.
type labelStats struct {
	labels int // values 1..labels are counted; others are ignored
	nz     int
	// slices[k*(labels+1)+l] are label l's figures on slice k. Sums are
	// kept per slice and added in slice order, so that results do not
	// depend on how many cores there are.
	slices []sliceStats
}

type sliceStats struct {
	count      int64
	sum        float64 // source values (mean_intensity)
	sumX, sumY int64   // voxel indices (side_fraction's centroids)
	lo, hi     float64 // extent along the patient's S axis (craniocaudal_length)
}

// gather reads the label map v (dims z, y, x) once. values (nil: none
// wanted) gives source voxel i; extent asks for the S-axis extent, on the
// geometry g.
func gather(v []uint8, dims [3]int, labels int, values func(i int) float32, st *Study, extent bool) *labelStats {
	nz, ny, nx := dims[0], dims[1], dims[2]
	ls := &labelStats{labels: labels, nz: nz, slices: make([]sliceStats, nz*(labels+1))}
	for i := range ls.slices {
		ls.slices[i].lo, ls.slices[i].hi = math.Inf(1), math.Inf(-1)
	}
	var g = st.Geometry
	d := g.Direction
	par.Each(nz, func(k int) {
		row := ls.slices[k*(labels+1) : (k+1)*(labels+1)]
		plane := v[k*nx*ny : (k+1)*nx*ny]
		for at := 0; at < len(plane); at++ {
			// Masks are mostly background: skip it eight voxels at a time.
			if at&7 == 0 && at+8 <= len(plane) && binary.LittleEndian.Uint64(plane[at:]) == 0 {
				at += 7
				continue
			}
			l := int(plane[at])
			if l == 0 || l > labels {
				continue
			}
			s := &row[l]
			s.count++
			i, j := at%nx, at/nx
			s.sumX += int64(i)
			s.sumY += int64(j)
			if values != nil {
				s.sum += float64(values(k*nx*ny + at))
			}
			if extent {
				z := g.Origin[2] + float64(i)*g.Spacing[0]*d[2] + float64(j)*g.Spacing[1]*d[5] + float64(k)*g.Spacing[2]*d[8]
				s.lo, s.hi = math.Min(s.lo, z), math.Max(s.hi, z)
			}
		}
	})
	return ls
}

// at is label l's figures on slice k.
func (ls *labelStats) at(k, l int) *sliceStats { return &ls.slices[k*(ls.labels+1)+l] }

// total is label l over every slice, summed in slice order.
func (ls *labelStats) total(l int) sliceStats {
	t := sliceStats{lo: math.Inf(1), hi: math.Inf(-1)}
	for k := 0; k < ls.nz; k++ {
		s := ls.at(k, l)
		t.count += s.count
		t.sum += s.sum
		t.sumX += s.sumX
		t.sumY += s.sumY
		t.lo, t.hi = math.Min(t.lo, s.lo), math.Max(t.hi, s.hi)
	}
	return t
}

// maxSlice is label l's largest count on one slice.
func (ls *labelStats) maxSlice(l int) int64 {
	var best int64
	for k := 0; k < ls.nz; k++ {
		best = max(best, ls.at(k, l).count)
	}
	return best
}
