package phantom

import (
	"fmt"
	"math"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
)

// Chest radiograph (PA, DX): trunk and shoulders, two lungs with vessel
// markings, heart and mediastinum, spine, clavicles and ribs, domes of the
// diaphragm. A pneumothorax is a rim of the pleural space, apical and
// lateral, where the lung has fallen away: darker, without markings, bounded
// medially by a thin bright visceral pleural line. Skin folds are the
// classic mimic: a long curved edge crossing the lung. 12-bit pixels,
// MONOCHROME2 or MONOCHROME1.
//
// Label map: 1 pneumothorax, 2 right hemithorax (aerated lung), 3 left.

const (
	labelPneumothorax = 1
	labelRightLung    = 2
	labelLeftLung     = 3
)

// DigitalXRayPresentation is the SOP Class UID of DX images for presentation.
const DigitalXRayPresentation = "1.2.840.10008.5.1.4.1.1.1.1"

type chest struct {
	// Lungs as ellipses in image mm (x right of image = patient left, y down).
	lung       [2]ellipse2 // 0: patient right (image left), 1: patient left
	heart      ellipse2
	body       ellipse2
	spineX     float64
	ribPhase   float64
	ribPitch   float64
	markFreq   [4]float64
	markPhase  [4]float64
	ptxSide    int     // -1: none
	ptxDepth   float64 // mm from the chest wall
	ptxApexY   float64 // the pneumothorax spans from the apex down to here
	folds      []fold
	diaphragmY [2]float64
}

type ellipse2 struct{ cx, cy, rx, ry float64 }

func (e ellipse2) f(x, y float64) float64 {
	dx, dy := (x-e.cx)/e.rx, (y-e.cy)/e.ry
	return dx*dx + dy*dy
}

type fold struct{ cx, cy, r, width float64 }

// inLung says whether (x, y) is inside lung side s (pleural space included).
func (c *chest) inLung(s int, x, y float64) bool {
	l := c.lung[s]
	if l.f(x, y) > 1 || y > c.diaphragmY[s]-6*math.Cos((x-l.cx)/l.rx) {
		return false
	}
	// The heart takes a bite out of the left lung, the mediastinum out of both.
	if s == 1 && c.heart.f(x, y) < 1 {
		return false
	}
	return math.Abs(x-c.spineX) > 22
}

// ptx says whether (x, y) lies in the pneumothorax: within ptxDepth of the
// lung's outer boundary, on the lateral side, above ptxApexY.
func (c *chest) ptx(x, y float64) bool {
	if c.ptxSide < 0 || !c.inLung(c.ptxSide, x, y) || y > c.ptxApexY {
		return false
	}
	l := c.lung[c.ptxSide]
	lateral := (x - l.cx) * float64(2*c.ptxSide-1) // > 0 away from the midline
	if lateral < -0.2*l.rx && y > l.cy-0.6*l.ry {
		return false
	}
	// Depth below the boundary, approximately (1 - sqrt(f)) * radius.
	return (1-math.Sqrt(l.f(x, y)))*math.Min(l.rx, l.ry) < c.ptxDepth
}

func (c *chest) value(x, y float64) float64 {
	if c.body.f(x, y) > 1 {
		return 350 // air around the patient
	}
	v := 2300.0 // soft tissue
	for s := 0; s < 2; s++ {
		if !c.inLung(s, x, y) {
			continue
		}
		if c.ptx(x, y) {
			v = 1000 // no lung, no markings
			continue
		}
		// Aerated lung with branching vessel markings.
		m := 0.0
		for i := 0; i < 4; i += 2 {
			m += math.Max(0, math.Sin(c.markFreq[i]*x+c.markPhase[i])*math.Sin(c.markFreq[i+1]*y+c.markPhase[i+1])-0.6)
		}
		v = 1150 + 600*m
		// The visceral pleural line at the edge of a collapsed lung.
		if c.ptxSide == s && y <= c.ptxApexY+5 {
			l := c.lung[s]
			d := (1-math.Sqrt(l.f(x, y)))*math.Min(l.rx, l.ry) - c.ptxDepth
			lateral := (x - l.cx) * float64(2*s-1)
			if d >= 0 && d < 1.2 && !(lateral < -0.2*l.rx && y > l.cy-0.6*l.ry) {
				v += 450
			}
		}
	}
	if c.heart.f(x, y) < 1 {
		v = 2450
	}
	if math.Abs(x-c.spineX) < 20 {
		v = math.Max(v, 2500) + 300 // mediastinum over the spine
	}
	// Posterior ribs: curved bands across each hemithorax.
	for s := 0; s < 2; s++ {
		l := c.lung[s]
		if math.Abs(x-l.cx) < l.rx*1.1 && c.body.f(x, y) < 0.9 {
			curve := 0.004 * (x - c.spineX) * (x - c.spineX)
			ph := math.Mod(y-curve-c.ribPhase, c.ribPitch)
			if ph < 0 {
				ph += c.ribPitch
			}
			if ph < 0.35*c.ribPitch && y < l.cy+0.8*l.ry {
				v += 380
			}
		}
	}
	// Clavicles.
	for _, sgn := range []float64{-1, 1} {
		cy := c.lung[0].cy - c.lung[0].ry*0.95 + 0.12*math.Abs(x-c.spineX)
		if math.Abs(y-cy) < 6 && math.Abs(x-c.spineX) < 150 && (x-c.spineX)*sgn > 10 {
			v += 500
		}
	}
	for _, f := range c.folds {
		d := math.Hypot(x-f.cx, y-f.cy) - f.r
		if d > -f.width && d < 0 {
			v += 120 // skin fold: a soft edge, no line beyond it
		}
	}
	return v
}

func chestXR(o Options) *Case {
	r := o.rng(2)
	positive := o.positive(r)
	matrix := o.Matrix
	if matrix == 0 {
		matrix = 512
	}
	ps := uniform(r, 0.7, 0.85) * 512 / float64(matrix) // imager pixel spacing, mm
	w := ps * float64(matrix)
	scale := uniform(r, 0.88, 1.1)
	cx, cy := w/2+uniform(r, -12, 12), w/2+uniform(r, -10, 15)
	c := &chest{ptxSide: -1, spineX: cx + uniform(r, -4, 4)}
	c.body = ellipse2{cx, cy + 20, 175 * scale, 230 * scale}
	for s, sgn := range []float64{-1, 1} {
		c.lung[s] = ellipse2{cx + sgn*72*scale*uniform(r, 0.95, 1.05), cy - 5, 62 * scale * uniform(r, 0.93, 1.07), 125 * scale * uniform(r, 0.93, 1.07)}
		c.diaphragmY[s] = cy + 85*scale + uniform(r, -8, 8)
	}
	c.diaphragmY[0] -= 10 * scale // the right dome sits higher
	c.heart = ellipse2{cx + 30*scale, cy + 55*scale, 62 * scale, 52 * scale}
	c.ribPitch, c.ribPhase = uniform(r, 22, 27)*scale, uniform(r, 0, 20)
	for i := range c.markFreq {
		c.markFreq[i], c.markPhase[i] = uniform(r, 0.15, 0.35), uniform(r, 0, 2*math.Pi)
	}
	truth := Truth{Kind: ChestXR, Seed: o.Seed, Generator: Version, Positive: positive,
		Labels: map[int]string{labelPneumothorax: "pneumothorax", labelRightLung: "right lung", labelLeftLung: "left lung"}}
	if positive {
		c.ptxSide = r.IntN(2)
		c.ptxDepth = uniform(r, 6, 30)
		l := c.lung[c.ptxSide]
		c.ptxApexY = l.cy + uniform(r, -0.3, 0.6)*l.ry
		side := map[int]string{0: "right", 1: "left"}[c.ptxSide]
		truth.Lesions = append(truth.Lesions, side+" pneumothorax")
	}
	if r.Float64() < 0.5 {
		n := 1 + r.IntN(2)
		for i := 0; i < n; i++ {
			s := r.IntN(2)
			l := c.lung[s]
			c.folds = append(c.folds, fold{cx: l.cx + float64(2*s-1)*uniform(r, 60, 140), cy: l.cy + uniform(r, -40, 60), r: uniform(r, 90, 160), width: uniform(r, 3, 8)})
		}
		truth.Mimics = append(truth.Mimics, "skin folds")
	}

	n := matrix * matrix
	pix := make([]float32, n)
	lab := make([]uint8, n)
	for j := 0; j < matrix; j++ {
		for i := 0; i < matrix; i++ {
			x, y := (float64(i)+0.5)*ps, (float64(j)+0.5)*ps
			pix[j*matrix+i] = float32(c.value(x, y))
			switch {
			case c.ptx(x, y):
				lab[j*matrix+i] = labelPneumothorax
			case c.inLung(0, x, y):
				lab[j*matrix+i] = labelRightLung
			case c.inLung(1, x, y):
				lab[j*matrix+i] = labelLeftLung
			}
		}
	}
	addNoise(pix, uniform(r, 25, 60), o.Seed)
	// Truth: area fraction of the affected hemithorax, integrated on a
	// grid four times finer than the pixels.
	frac := 0.0
	if positive {
		var ptxA, hemiA float64
		step := ps / 4
		for y := step / 2; y < w; y += step {
			for x := step / 2; x < w; x += step {
				if c.inLung(c.ptxSide, x, y) {
					hemiA++
					if c.ptx(x, y) {
						ptxA++
					}
				}
			}
		}
		frac = ptxA / hemiA
	}
	truth.Measurements = []Measurement{{Name: "pneumothorax area fraction", Label: "pneumothorax", Value: frac, Unit: "1"}}
	truth.StudyUID, truth.SeriesUID = uid(ChestXR, o.Seed, "study"), uid(ChestXR, o.Seed, "series")
	mono1 := r.Float64() < 0.3
	stored := make([]int32, n)
	for i, v := range pix {
		s := int32(min(max(math.Round(float64(v)), 0), 4095))
		if mono1 {
			s = 4095 - s
		}
		stored[i] = s
	}
	photometric := "MONOCHROME2"
	if mono1 {
		photometric = "MONOCHROME1"
	}
	truth.Dims = [3]int{1, matrix, matrix}
	truth.Spacing = [3]float64{ps, ps, 1}
	truth.Direction = [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}
	series := dicomwrite.Series{Rows: matrix, Cols: matrix, Slices: 1, Spacing: [3]float64{ps, ps, 1}, Slope: 1,
		Modality: "DX", BodyPart: "CHEST", Photometric: photometric, Unsigned: true, BitsStored: 12,
		SOPClassUID: DigitalXRayPresentation, StudyUID: truth.StudyUID, SeriesUID: truth.SeriesUID,
		PatientName: phantomName(truth.Kind), PatientID: fmt.Sprintf("PHANTOM-%d", truth.Seed), StudyDate: "20260101",
		Omit:  []tag.Tag{tag.ImagePositionPatient, tag.ImageOrientationPatient, tag.SliceThickness},
		Value: func(i, j, k int) int32 { return stored[j*matrix+i] }}
	return &Case{Truth: truth, Series: series, Labels: lab}
}
