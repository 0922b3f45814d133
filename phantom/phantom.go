// Package phantom generates synthetic studies with exact ground truth: head
// CT with and without intracranial hemorrhage, chest radiographs with and
// without pneumothorax, and abdominal CT with psoas muscles. They are
// written as real DICOM series (correct UIDs, geometry, rescale, modality
// and body part) with a label map and a JSON file of the true findings and
// measurements beside them. Every case is deterministic for its seed.
//
// The phantoms train and evaluate voxserve's reference bundles, and drive
// tests and benchmarks; they are realistic where it matters to the
// pipeline (HU ranges, geometry, noise, slice thickness, pose) and make no
// claim beyond that.
package phantom

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/tensor"
)

// Version identifies the generator; it is recorded in every truth file and
// in the bundles trained on its output. Bump it when output changes.
const Version = "1"

// Kind is a phantom family.
type Kind string

// The phantom families.
const (
	HeadCT    Kind = "head-ct"
	ChestXR   Kind = "chest-xr"
	AbdomenCT Kind = "abdomen-ct"
)

// Kinds lists the families.
func Kinds() []Kind { return []Kind{HeadCT, ChestXR, AbdomenCT} }

// Options choose one case.
type Options struct {
	Seed uint64
	// Positive forces a positive (true) or negative (false) case; nil draws
	// it with probability PositiveFraction (default 0.5).
	Positive         *bool
	PositiveFraction float64
	// Matrix is the in-plane size (default 256 for CT, 512 for radiographs).
	Matrix int
	// SliceThickness in mm; 0 draws one of the usual CT reconstructions
	// between 0.625 and 5 mm.
	SliceThickness float64
}

// Measurement is one true value with its UCUM unit.
type Measurement struct {
	Name  string  `json:"name"`
	Label string  `json:"label,omitempty"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

// Truth is the ground truth of a case.
type Truth struct {
	Kind      Kind   `json:"kind"`
	Seed      uint64 `json:"seed"`
	Generator string `json:"generator_version"`
	// Positive is the study-level finding (hemorrhage, pneumothorax).
	Positive bool `json:"positive"`
	// Lesions describes what was placed (types, sizes), for analysis.
	Lesions      []string      `json:"lesions,omitempty"`
	Mimics       []string      `json:"mimics,omitempty"`
	Measurements []Measurement `json:"measurements"`
	// Labels maps label-map values to structure names.
	Labels map[int]string `json:"labels"`
	// Geometry of the image and label map.
	Dims           [3]int     `json:"dims"` // slices, rows, columns
	Spacing        [3]float64 `json:"spacing_mm"`
	Origin         [3]float64 `json:"origin_mm"`
	Direction      [9]float64 `json:"direction"`
	SliceThickness float64    `json:"slice_thickness_mm"`
	StudyUID       string     `json:"study_instance_uid"`
	SeriesUID      string     `json:"series_instance_uid"`
}

// Case is one generated study.
type Case struct {
	Truth  Truth
	Series dicomwrite.Series
	// Labels is the label map, z-major like the image.
	Labels []uint8
}

// Generate makes one case of a kind.
func Generate(kind Kind, opts Options) (*Case, error) {
	switch kind {
	case HeadCT:
		return headCT(opts), nil
	case ChestXR:
		return chestXR(opts), nil
	case AbdomenCT:
		return abdomenCT(opts), nil
	}
	return nil, fmt.Errorf("unknown phantom kind %q (want head-ct, chest-xr or abdomen-ct)", kind)
}

func (o Options) rng(stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(o.Seed, 0x9e3779b97f4a7c15^stream))
}

func (o Options) positive(r *rand.Rand) bool {
	if o.Positive != nil {
		return *o.Positive
	}
	f := o.PositiveFraction
	if f == 0 {
		f = 0.5
	}
	return r.Float64() < f
}

// uid derives a DICOM UID under the UUID-derived root 2.25 from the seed.
func uid(kind Kind, seed uint64, part string) string {
	h := uint64(14695981039346656037)
	for _, b := range []byte(fmt.Sprintf("%s/%d/%s", kind, seed, part)) {
		h ^= uint64(b)
		h *= 1099511628211
	}
	return fmt.Sprintf("2.25.%d%d", h>>1, seed%1000)
}

func uniform(r *rand.Rand, lo, hi float64) float64 { return lo + (hi-lo)*r.Float64() }

// sliceThickness draws a usual CT reconstruction thickness.
func sliceThickness(r *rand.Rand, o Options) float64 {
	if o.SliceThickness > 0 {
		return o.SliceThickness
	}
	choices := []float64{0.625, 1, 1.25, 2, 2.5, 3, 5}
	return choices[r.IntN(len(choices))]
}

// rotation builds a rotation matrix from yaw (about S), pitch (about L) and
// roll (about P), in radians; rows are the rotated axes.
func rotation(yaw, pitch, roll float64) [9]float64 {
	cy, sy := math.Cos(yaw), math.Sin(yaw)
	cp, sp := math.Cos(pitch), math.Sin(pitch)
	cr, sr := math.Cos(roll), math.Sin(roll)
	rz := [9]float64{cy, -sy, 0, sy, cy, 0, 0, 0, 1}
	rx := [9]float64{1, 0, 0, 0, cp, -sp, 0, sp, cp}
	ry := [9]float64{cr, 0, sr, 0, 1, 0, -sr, 0, cr}
	return matMul(rz, matMul(rx, ry))
}

func matMul(a, b [9]float64) [9]float64 {
	var m [9]float64
	for i := 0; i < 3; i++ {
		for j := 0; j < 3; j++ {
			for k := 0; k < 3; k++ {
				m[3*i+j] += a[3*i+k] * b[3*k+j]
			}
		}
	}
	return m
}

// toLocal maps patient position p into a body frame centred at c with
// rotation R (local = Rᵀ (p - c)).
func toLocal(p, c [3]float64, r [9]float64) [3]float64 {
	d := [3]float64{p[0] - c[0], p[1] - c[1], p[2] - c[2]}
	return [3]float64{
		r[0]*d[0] + r[3]*d[1] + r[6]*d[2],
		r[1]*d[0] + r[4]*d[1] + r[7]*d[2],
		r[2]*d[0] + r[5]*d[1] + r[8]*d[2],
	}
}

// grid is the image geometry of a CT case.
type grid struct {
	nx, ny, nz int
	spacing    [3]float64 // column, row, slice
	origin     [3]float64
	row, col   [3]float64 // direction cosines
	normal     [3]float64
	thickness  float64
}

func (g grid) position(i, j float64, k int) [3]float64 {
	var p [3]float64
	for c := 0; c < 3; c++ {
		p[c] = g.origin[c] + i*g.spacing[0]*g.row[c] + j*g.spacing[1]*g.col[c] + float64(k)*g.spacing[2]*g.normal[c]
	}
	return p
}

// centre places the grid's middle voxel on the scanner's isocentre.
func (g *grid) centre() {
	half := [3]float64{float64(g.nx) * g.spacing[0] / 2, float64(g.ny) * g.spacing[1] / 2, float64(g.nz-1) * g.spacing[2] / 2}
	for c := 0; c < 3; c++ {
		g.origin[c] = -half[0]*g.row[c] - half[1]*g.col[c] - half[2]*g.normal[c]
	}
}

// renderBody renders a body defined in its own frame (value and label of a
// local point) posed at centre with rotation rot, sampling the slice
// profile every 0.75 mm of thickness.
func (g grid) renderBody(centre [3]float64, rot [9]float64, value func(local [3]float64) float64, label func(local [3]float64) uint8) ([]float32, []uint8) {
	samples := max(1, int(math.Ceil(g.thickness/0.75)))
	return g.render(samples,
		func(p [3]float64) float64 { return value(toLocal(p, centre, rot)) },
		func(p [3]float64) uint8 { return label(toLocal(p, centre, rot)) })
}

// render fills a CT volume: value(p, voxelIndex) gives HU (averaged over
// samples across the slice thickness, as a scanner's slice profile does)
// and label(p) the label at the voxel centre.
func (g grid) render(samples int, value func(p [3]float64) float64, label func(p [3]float64) uint8) ([]float32, []uint8) {
	n := g.nx * g.ny * g.nz
	hu := make([]float32, n)
	lab := make([]uint8, n)
	par.Each(g.nz, func(k int) {
		for j := 0; j < g.ny; j++ {
			for i := 0; i < g.nx; i++ {
				c := g.position(float64(i), float64(j), k)
				sum := 0.0
				for s := 0; s < samples; s++ {
					off := (float64(s)+0.5)/float64(samples) - 0.5
					var p [3]float64
					for a := 0; a < 3; a++ {
						p[a] = c[a] + off*g.thickness*g.normal[a]
					}
					sum += value(p)
				}
				idx := (k*g.ny+j)*g.nx + i
				hu[idx] = float32(sum / float64(samples))
				lab[idx] = label(c)
			}
		}
	})
	return hu, lab
}

// addNoise adds Gaussian noise of sigma HU, deterministically per voxel.
func addNoise(v []float32, sigma float64, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	for i := range v {
		v[i] += float32(r.NormFloat64() * sigma)
	}
}

// ctSeries wraps a rendered HU volume as a DICOM series (stored = HU + 1024).
func ctSeries(g grid, hu []float32, truth *Truth, modality, bodyPart string) dicomwrite.Series {
	stored := make([]int32, len(hu))
	for i, v := range hu {
		s := math.Round(float64(v) + 1024)
		stored[i] = int32(min(max(s, -32768), 32767))
	}
	o := [6]float64{g.row[0], g.row[1], g.row[2], g.col[0], g.col[1], g.col[2]}
	plane := g.nx * g.ny
	truth.Dims = [3]int{g.nz, g.ny, g.nx}
	truth.Spacing = g.spacing
	truth.Origin = g.origin
	truth.Direction = [9]float64{g.row[0], g.row[1], g.row[2], g.col[0], g.col[1], g.col[2], g.normal[0], g.normal[1], g.normal[2]}
	truth.SliceThickness = g.thickness
	return dicomwrite.Series{
		Rows: g.ny, Cols: g.nx, Slices: g.nz, Spacing: g.spacing, Origin: g.origin, Orientation: o,
		Slope: 1, Intercept: -1024, Modality: modality, BodyPart: bodyPart, Thickness: g.thickness,
		StudyUID: truth.StudyUID, SeriesUID: truth.SeriesUID,
		PatientName: phantomName(truth.Kind), PatientID: fmt.Sprintf("PHANTOM-%d", truth.Seed), StudyDate: "20260101",
		Value: func(i, j, k int) int32 { return stored[k*plane+j*g.nx+i] },
	}
}

// phantomName is the synthetic Patient's Name of a kind's studies.
func phantomName(k Kind) string {
	return "PHANTOM^" + strings.ToUpper(strings.ReplaceAll(string(k), "-", ""))
}

// volumeML integrates a region's volume by counting a fine regular grid of
// samples over its bounding box (lo, hi in local mm): the truth volume.
func volumeML(lo, hi [3]float64, step float64, inside func(p [3]float64) bool) float64 {
	count := 0
	for z := lo[2] + step/2; z < hi[2]; z += step {
		for y := lo[1] + step/2; y < hi[1]; y += step {
			for x := lo[0] + step/2; x < hi[0]; x += step {
				if inside([3]float64{x, y, z}) {
					count++
				}
			}
		}
	}
	return float64(count) * step * step * step / 1000
}

// Write stores the case in dir: the DICOM series (IM0000.dcm ...), the
// label map (labels.npy, uint8 [slices, rows, columns], same geometry) and
// truth.json.
func (c *Case) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for k := 0; k < c.Series.Slices; k++ {
		b, err := dicomwrite.Encode(c.Series.Slice(k))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("IM%04d.dcm", k)), b, 0o644); err != nil {
			return err
		}
	}
	f, err := os.Create(filepath.Join(dir, "labels.npy"))
	if err != nil {
		return err
	}
	d := c.Truth.Dims
	if err := tensor.WriteNpy(f, &tensor.Tensor{DType: tensor.Uint8, Shape: []int64{int64(d[0]), int64(d[1]), int64(d[2])}, Data: c.Labels}); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c.Truth, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "truth.json"), append(b, '\n'), 0o644)
}
