package phantom

import "math"

// Abdominal CT around the lumbar spine: skin, subcutaneous fat, the muscular
// wall, visceral fat with bowel loops (soft tissue and gas), liver, two
// kidneys, lumbar vertebrae, and the two psoas muscles: tapered, running
// from the upper lumbar spine down and out towards the pelvis, each with its
// own size and attenuation (fatty infiltration lowers it).
//
// HU: fat -100, muscle 35-60, kidney 30, liver 55, bowel 20, gas -900,
// cancellous bone 250, cortical bone 1100.
//
// Label map: 1 left psoas, 2 right psoas. Truth: per side volume (mL),
// craniocaudal length (cm), maximal axial cross-sectional area (cm2) and
// mean attenuation (HU).

const (
	labelLeftPsoas  = 1
	labelRightPsoas = 2
)

type psoas struct {
	side       float64 // +1 patient left (+x in LPS), -1 right
	zTop, zBot float64 // local mm, top above bottom (zTop > zBot)
	x0, x1     float64 // lateral offset of the centre at top and bottom
	y0, y1     float64 // AP offset (posterior +) at top and bottom
	rMax       float64 // largest radius (mm)
	aspect     float64 // AP/LR ratio of the cross-section
	hu         float64
}

// at returns the cross-section centre and radii at height z, or ok=false
// outside the muscle's extent.
func (p psoas) at(z float64) (cx, cy, rx, ry float64, ok bool) {
	if z > p.zTop || z < p.zBot {
		return 0, 0, 0, 0, false
	}
	t := (p.zTop - z) / (p.zTop - p.zBot) // 0 at the top, 1 at the bottom
	cx = p.side * (p.x0 + (p.x1-p.x0)*t)
	cy = p.y0 + (p.y1-p.y0)*t
	// Thin at the origin on the upper vertebrae, widest in the lower
	// lumbar region, narrowing again towards the inguinal ligament.
	r := p.rMax * math.Pow(math.Sin(math.Pi*(0.06+0.88*math.Pow(t, 0.8))), 0.6)
	r = math.Max(r, 3)
	return cx, cy, r, r * p.aspect, true
}

func (p psoas) inside(q [3]float64) bool {
	cx, cy, rx, ry, ok := p.at(q[2])
	if !ok {
		return false
	}
	dx, dy := (q[0]-cx)/rx, (q[1]-cy)/ry
	return dx*dx+dy*dy <= 1
}

type abdomen struct {
	body, fatInner, wallInner ellipse2
	psoas                     [2]psoas
	vertebraR                 float64
	kidneys                   [2]ellipsoid
	liver                     ellipsoid
	bowel                     []sphere
	zDisc                     float64 // period of vertebrae along z
	zDiscPhase                float64
}

func (a *abdomen) hu(p [3]float64) float64 {
	x, y := p[0], p[1]
	if a.body.f(x, y) > 1 {
		return -1000
	}
	if a.fatInner.f(x, y) > 1 {
		return -100 // subcutaneous fat
	}
	if a.wallInner.f(x, y) > 1 {
		return 50 // abdominal wall muscle
	}
	for _, ps := range a.psoas {
		if ps.inside(p) {
			return ps.hu
		}
	}
	// Vertebral body and posterior elements, with discs between bodies.
	vy := a.wallInner.cy + a.wallInner.ry - a.vertebraR - 12
	if d := math.Hypot(x, y-vy); d < a.vertebraR {
		ph := math.Mod(p[2]-a.zDiscPhase, a.zDisc)
		if ph < 0 {
			ph += a.zDisc
		}
		if ph < 8 {
			return 90 // intervertebral disc
		}
		if d > a.vertebraR-2.5 {
			return 1100
		}
		return 250
	}
	if math.Abs(x) < 6 && y > vy+a.vertebraR && y < vy+a.vertebraR+25 {
		return 900 // spinous process
	}
	for _, k := range a.kidneys {
		if f := k.f(p); f <= 1 {
			if f > 0.7 {
				return 150 // cortex (enhancing)
			}
			return 30
		}
	}
	if a.liver.inside(p) {
		return 55
	}
	for _, b := range a.bowel {
		if dist(p, b.c) < b.r {
			return b.hu
		}
	}
	return -90 // visceral fat
}

func (a *abdomen) label(p [3]float64) uint8 {
	if a.psoas[0].inside(p) {
		return labelLeftPsoas
	}
	if a.psoas[1].inside(p) {
		return labelRightPsoas
	}
	return 0
}

func abdomenCT(o Options) *Case {
	r := o.rng(3)
	size := uniform(r, 0.85, 1.2)
	a := &abdomen{vertebraR: uniform(r, 17, 22), zDisc: uniform(r, 34, 40), zDiscPhase: uniform(r, 0, 30)}
	a.body = ellipse2{0, uniform(r, -5, 5), 165 * size, 120 * size}
	fat := uniform(r, 8, 35)
	a.fatInner = ellipse2{a.body.cx, a.body.cy, a.body.rx - fat, a.body.ry - fat}
	a.wallInner = ellipse2{a.body.cx, a.body.cy, a.fatInner.rx - 10, a.fatInner.ry - 10}
	vy := a.wallInner.cy + a.wallInner.ry - a.vertebraR - 12
	length := uniform(r, 170, 230)
	zTop := length / 2
	hu := uniform(r, 35, 58)
	for s, side := range []float64{1, -1} {
		asym := uniform(r, 0.9, 1.1)
		a.psoas[s] = psoas{side: side, zTop: zTop + uniform(r, -6, 6), zBot: zTop - length + uniform(r, -6, 6),
			x0: a.vertebraR + uniform(r, 2, 6), x1: uniform(r, 55, 80) * size,
			y0: vy - uniform(r, 0, 6), y1: vy - uniform(r, 25, 45),
			rMax: uniform(r, 15, 24) * size * asym, aspect: uniform(r, 0.75, 1.05), hu: hu + uniform(r, -4, 4)}
	}
	for s, side := range []float64{1, -1} {
		a.kidneys[s] = ellipsoid{[3]float64{side * uniform(r, 55, 75), vy - 5, zTop - uniform(r, 10, 40)}, [3]float64{28, 22, 50}}
	}
	a.liver = ellipsoid{[3]float64{-70 * size, -20, zTop + 40}, [3]float64{90 * size, 80 * size, 70}}
	for i := 0; i < 25; i++ {
		c := [3]float64{uniform(r, -110, 110) * size, uniform(r, -80, 20) * size, uniform(r, -length/2, length/2)}
		v := 20.0
		if r.Float64() < 0.3 {
			v = -900
		}
		a.bowel = append(a.bowel, sphere{c, uniform(r, 8, 22), v})
	}

	truth := Truth{Kind: AbdomenCT, Seed: o.Seed, Generator: Version, Positive: true,
		Labels: map[int]string{labelLeftPsoas: "left psoas", labelRightPsoas: "right psoas"}}
	rot := rotation(uniform(r, -0.12, 0.12), uniform(r, -0.08, 0.08), uniform(r, -0.05, 0.05))
	centre := [3]float64{uniform(r, -15, 15), uniform(r, -15, 15), 0}
	matrix := o.Matrix
	if matrix == 0 {
		matrix = 256
	}
	fov := math.Max(2*a.body.rx+uniform(r, 20, 60), 300)
	thick := sliceThickness(r, o)
	g := grid{nx: matrix, ny: matrix, spacing: [3]float64{fov / float64(matrix), fov / float64(matrix), thick}, thickness: thick,
		row: [3]float64{1, 0, 0}, col: [3]float64{0, 1, 0}, normal: [3]float64{0, 0, 1}}
	g.nz = max(1, int(math.Round((length+uniform(r, 40, 70))/thick)))
	g.centre()
	huv, lab := g.renderBody(centre, rot, a.hu, a.label)
	sigma := min(max(uniform(r, 6, 14)*math.Sqrt(1.25/thick), 3), 18)
	addNoise(huv, sigma, o.Seed)

	for s, name := range []string{"left", "right"} {
		ps := a.psoas[s]
		m := psoasTruth(ps)
		truth.Measurements = append(truth.Measurements,
			Measurement{Name: "volume", Label: name + " psoas", Value: m.volumeML, Unit: "mL"},
			Measurement{Name: "craniocaudal length", Label: name + " psoas", Value: m.lengthCM, Unit: "cm"},
			Measurement{Name: "maximal cross-sectional area", Label: name + " psoas", Value: m.areaCM2, Unit: "cm2"},
			Measurement{Name: "mean attenuation", Label: name + " psoas", Value: ps.hu, Unit: "[hnsf'U]"})
	}
	truth.StudyUID, truth.SeriesUID = uid(AbdomenCT, o.Seed, "study"), uid(AbdomenCT, o.Seed, "series")
	c := &Case{Truth: truth, Labels: lab}
	c.Series = ctSeries(g, huv, &c.Truth, "CT", "ABDOMEN")
	return c
}

type psoasMeasures struct{ volumeML, lengthCM, areaCM2 float64 }

// psoasTruth integrates the muscle analytically per 0.1 mm of height: its
// cross-sections are ellipses (area π rx ry). The pose rotation preserves
// volume; the length is along the body axis, the area in the body's axial
// plane (the scan is near-axial to it).
func psoasTruth(p psoas) psoasMeasures {
	const dz = 0.1
	var vol, best float64
	for z := p.zBot + dz/2; z < p.zTop; z += dz {
		_, _, rx, ry, ok := p.at(z)
		if !ok {
			continue
		}
		a := math.Pi * rx * ry
		vol += a * dz
		best = math.Max(best, a)
	}
	return psoasMeasures{volumeML: vol / 1000, lengthCM: (p.zTop - p.zBot) / 10, areaCM2: best / 100}
}
