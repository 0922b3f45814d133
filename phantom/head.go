package phantom

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Head CT: scalp, a skull with dense tables and a diploe, gray and white
// matter, lateral ventricles and CSF-filled sulci; in positive cases one or
// two hemorrhages (intraparenchymal blob with an oedema rim, subdural
// crescent along the inner table, subarachnoid blood in sulci); in any case
// possibly hard mimics (calcifications, beam-hardening streaks).
//
// HU: air -1000, scalp 30, bone 700 (diploe) to 1600 (tables), gray matter
// 38, white matter 28, CSF 6, acute blood 55-85, calcification 150-600.

const labelHemorrhage = 1

type ellipsoid struct {
	c, r [3]float64 // centre, semi-axes (local mm)
}

func (e ellipsoid) inside(p [3]float64) bool { return e.f(p) <= 1 }

// f is the ellipsoid's implicit function: < 1 inside.
func (e ellipsoid) f(p [3]float64) float64 {
	s := 0.0
	for a := 0; a < 3; a++ {
		d := (p[a] - e.c[a]) / e.r[a]
		s += d * d
	}
	return s
}

// shrink returns the ellipsoid with every semi-axis reduced by d mm.
func (e ellipsoid) shrink(d float64) ellipsoid {
	return ellipsoid{e.c, [3]float64{e.r[0] - d, e.r[1] - d, e.r[2] - d}}
}

type head struct {
	skin, skullOut, skullIn ellipsoid
	ventricles              [2]ellipsoid
	sulcusFreq              [3]float64
	sulcusPhase             [3]float64
	skullThick              float64
	lesions                 []lesion
	calcs                   []sphere
	streak                  *streak
}

type sphere struct {
	c  [3]float64
	r  float64
	hu float64
}

type streak struct {
	angle, amp, z0 float64
}

type lesion struct {
	kind string
	hu   float64
	// inside reports whether a local point is blood.
	inside func(p [3]float64) bool
	// lo, hi bound it (local mm), for the truth volume.
	lo, hi [3]float64
	// rim, for intraparenchymal blood: oedema around it.
	rim *ellipsoid
}

// sulcal reports whether p (inside the inner table) lies in a CSF-filled
// sulcus: a band below the brain surface cut by a smooth 3D pattern.
func (h *head) sulcal(p [3]float64) bool {
	f := h.skullIn.f(p)
	if f > 1 || f < 0.78 { // sulci reach ~10% of the radius below the surface
		return false
	}
	v := math.Sin(h.sulcusFreq[0]*p[0]+h.sulcusPhase[0]) * math.Sin(h.sulcusFreq[1]*p[1]+h.sulcusPhase[1]) * math.Sin(h.sulcusFreq[2]*p[2]+h.sulcusPhase[2])
	return v > 0.55
}

// hu is the tissue value at a local point, without noise.
func (h *head) hu(p [3]float64) float64 {
	if !h.skin.inside(p) {
		return -1000
	}
	if !h.skullOut.inside(p) {
		return 30 // scalp
	}
	if !h.skullIn.inside(p) {
		// Dense outer and inner tables, a softer diploe between them.
		fo, fi := math.Sqrt(h.skullOut.f(p)), math.Sqrt(h.skullIn.f(p))
		depth := (1 - fo) / ((fi - fo) + 1e-9) // 0 at the outer surface, 1 at the inner
		if depth < 0.3 || depth > 0.7 {
			return 1600
		}
		return 750
	}
	for _, c := range h.calcs {
		if dist(p, c.c) <= c.r {
			return c.hu
		}
	}
	v := 28.0 // white matter
	if h.skullIn.f(p) > 0.72 {
		v = 38 // cortex
	}
	for _, l := range h.lesions {
		if l.rim != nil && l.rim.inside(p) && !l.inside(p) {
			v = 18 // oedema
		}
	}
	if h.ventricles[0].inside(p) || h.ventricles[1].inside(p) || h.sulcal(p) {
		v = 6
	}
	for _, l := range h.lesions {
		if l.inside(p) {
			v = l.hu
		}
	}
	if s := h.streak; s != nil && p[2] < s.z0 {
		// Beam hardening between dense bones of the skull base: alternating
		// dark and bright bands radiating across the posterior fossa.
		a := math.Atan2(p[1], p[0]) - s.angle
		v += s.amp * math.Cos(14*a)
	}
	return v
}

func (h *head) label(p [3]float64) uint8 {
	if !h.skullIn.inside(p) {
		return 0
	}
	for _, l := range h.lesions {
		if l.inside(p) {
			return labelHemorrhage
		}
	}
	return 0
}

func dist(a, b [3]float64) float64 {
	return math.Sqrt((a[0]-b[0])*(a[0]-b[0]) + (a[1]-b[1])*(a[1]-b[1]) + (a[2]-b[2])*(a[2]-b[2]))
}

func headCT(o Options) *Case {
	r := o.rng(1)
	positive := o.positive(r)
	size := uniform(r, 0.9, 1.1)
	h := &head{}
	h.skin = ellipsoid{r: [3]float64{76 * size, 94 * size, 82 * size}}
	h.skullOut = h.skin.shrink(uniform(r, 3, 6))
	h.skullThick = uniform(r, 5, 8)
	h.skullIn = h.skullOut.shrink(h.skullThick)
	vs := uniform(r, 0.8, 1.3)
	h.ventricles[0] = ellipsoid{[3]float64{-9, 4, 10}, [3]float64{6 * vs, 22 * vs, 9 * vs}}
	h.ventricles[1] = ellipsoid{[3]float64{9, 4, 10}, [3]float64{6 * vs, 22 * vs, 9 * vs}}
	for a := 0; a < 3; a++ {
		h.sulcusFreq[a] = uniform(r, 0.35, 0.6)
		h.sulcusPhase[a] = uniform(r, 0, 2*math.Pi)
	}
	truth := Truth{Kind: HeadCT, Seed: o.Seed, Generator: Version, Positive: positive,
		Labels: map[int]string{labelHemorrhage: "hemorrhage"}}
	if positive {
		n := 1 + r.IntN(2)
		for i := 0; i < n; i++ {
			h.lesions = append(h.lesions, h.newLesion(r))
		}
	}
	// Hard mimics appear in negatives and positives alike.
	if r.Float64() < 0.6 { // pineal calcification
		h.calcs = append(h.calcs, sphere{[3]float64{0, -18, 8}, uniform(r, 1.5, 4), uniform(r, 150, 600)})
		truth.Mimics = append(truth.Mimics, "pineal calcification")
	}
	if r.Float64() < 0.4 { // choroid plexus calcifications in the ventricles
		for _, v := range h.ventricles {
			c := v.c
			c[1] -= 10
			h.calcs = append(h.calcs, sphere{c, uniform(r, 1.5, 3), uniform(r, 120, 400)})
		}
		truth.Mimics = append(truth.Mimics, "choroid plexus calcification")
	}
	if r.Float64() < 0.5 {
		h.streak = &streak{angle: uniform(r, 0, math.Pi), amp: uniform(r, 8, 25), z0: -h.skullIn.r[2] * 0.45}
		truth.Mimics = append(truth.Mimics, "beam-hardening streaks")
	}

	// Pose in the scanner and image geometry.
	rot := rotation(uniform(r, -0.26, 0.26), uniform(r, -0.26, 0.26), uniform(r, -0.17, 0.17))
	centre := [3]float64{uniform(r, -10, 10), uniform(r, -10, 10), uniform(r, -5, 5)}
	matrix := o.Matrix
	if matrix == 0 {
		matrix = 256
	}
	fov := uniform(r, 210, 250)
	thick := sliceThickness(r, o)
	g := grid{nx: matrix, ny: matrix, spacing: [3]float64{fov / float64(matrix), fov / float64(matrix), thick}, thickness: thick,
		row: [3]float64{1, 0, 0}, col: [3]float64{0, 1, 0}, normal: [3]float64{0, 0, 1}}
	if r.Float64() < 0.25 {
		// An oblique acquisition plane, tilted about the left-right axis.
		t := uniform(r, 0.17, 0.4) * float64(1-2*r.IntN(2))
		g.col = [3]float64{0, math.Cos(t), math.Sin(t)}
		g.normal = [3]float64{0, -math.Sin(t), math.Cos(t)}
	}
	extent := 2*h.skin.r[2] + uniform(r, 0, 20)
	g.nz = max(1, int(math.Round(extent/thick)))
	g.centre()
	hu, lab := g.renderBody(centre, rot, h.hu, h.label)
	// Thicker slices average more photons: less noise.
	sigma := min(max(uniform(r, 4, 10)*math.Sqrt(1.25/thick), 2.5), 14)
	addNoise(hu, sigma, o.Seed)

	total := 0.0
	for _, l := range h.lesions {
		truth.Lesions = append(truth.Lesions, l.kind)
	}
	if positive {
		lo, hi := [3]float64{math.Inf(1), math.Inf(1), math.Inf(1)}, [3]float64{math.Inf(-1), math.Inf(-1), math.Inf(-1)}
		for _, l := range h.lesions {
			for a := 0; a < 3; a++ {
				lo[a], hi[a] = math.Min(lo[a], l.lo[a]), math.Max(hi[a], l.hi[a])
			}
		}
		total = volumeML(lo, hi, 0.4, func(p [3]float64) bool { return h.label(p) == labelHemorrhage })
	}
	truth.Measurements = []Measurement{{Name: "hemorrhage volume", Label: "hemorrhage", Value: total, Unit: "mL"}}
	truth.StudyUID, truth.SeriesUID = uid(HeadCT, o.Seed, "study"), uid(HeadCT, o.Seed, "series")
	c := &Case{Truth: truth, Labels: lab}
	c.Series = ctSeries(g, hu, &c.Truth, "CT", "HEAD")
	return c
}

// newLesion places one hemorrhage of a random type.
func (h *head) newLesion(r *rand.Rand) lesion {
	in := h.skullIn
	switch r.IntN(3) {
	case 0: // intraparenchymal: an ellipsoid within the brain, with oedema
		rad := [3]float64{uniform(r, 4, 16), uniform(r, 4, 16), uniform(r, 4, 14)}
		c := [3]float64{25, 20, 15} // fallback: right frontal lobe
		for try := 0; try < 200; try++ {
			p := [3]float64{uniform(r, -45, 45), uniform(r, -55, 55), uniform(r, -20, 40)}
			// Keep it clear of the skull and out of the ventricles.
			if in.shrink(math.Max(rad[0], math.Max(rad[1], rad[2]))+6).inside(p) && !h.ventricles[0].inside(p) && !h.ventricles[1].inside(p) {
				c = p
				break
			}
		}
		blob := ellipsoid{c, rad}
		rim := ellipsoid{c, [3]float64{rad[0] + 3, rad[1] + 3, rad[2] + 3}}
		return lesion{kind: fmt.Sprintf("intraparenchymal %.0fx%.0fx%.0f mm", 2*rad[0], 2*rad[1], 2*rad[2]), hu: uniform(r, 55, 85),
			inside: blob.inside, rim: &rim,
			lo: [3]float64{c[0] - rad[0], c[1] - rad[1], c[2] - rad[2]}, hi: [3]float64{c[0] + rad[0], c[1] + rad[1], c[2] + rad[2]}}
	case 1: // subdural: a crescent along the inner table over a sector
		thick := uniform(r, 3, 10)
		inner := in.shrink(thick)
		az := uniform(r, 0, 2*math.Pi)
		span := uniform(r, 0.5, 1.1) // radians either side
		zlo, zhi := uniform(r, -10, 10), uniform(r, 25, 55)
		inside := func(p [3]float64) bool {
			if !in.inside(p) || inner.inside(p) || p[2] < zlo || p[2] > zhi {
				return false
			}
			d := math.Remainder(math.Atan2(p[1], p[0])-az, 2*math.Pi)
			// Taper the crescent's thickness towards its ends.
			return math.Abs(d) <= span*(1-0.5*math.Abs(p[2]-(zlo+zhi)/2)/((zhi-zlo)/2+1e-9))
		}
		return lesion{kind: fmt.Sprintf("subdural crescent %.0f mm thick", thick), hu: uniform(r, 50, 80), inside: inside,
			lo: [3]float64{-in.r[0], -in.r[1], zlo}, hi: [3]float64{in.r[0], in.r[1], zhi}}
	default: // subarachnoid: blood in the sulci of a region
		c := [3]float64{0, in.r[1] * 0.92, 20} // fallback: frontal convexity
		for try := 0; try < 500; try++ {
			p := [3]float64{uniform(r, -60, 60), uniform(r, -75, 75), uniform(r, -10, 50)}
			if f := in.f(p); f > 0.8 && f < 1 {
				c = p
				break
			}
		}
		rad := uniform(r, 18, 32)
		inside := func(p [3]float64) bool { return dist(p, c) <= rad && h.sulcal(p) }
		return lesion{kind: fmt.Sprintf("subarachnoid over %.0f mm", 2*rad), hu: uniform(r, 60, 75), inside: inside,
			lo: [3]float64{c[0] - rad, c[1] - rad, c[2] - rad}, hi: [3]float64{c[0] + rad, c[1] + rad, c[2] + rad}}
	}
}
