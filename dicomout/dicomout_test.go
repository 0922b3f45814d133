package dicomout

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicom/dicomwrite"
	"github.com/voxserve/voxserve/internal/dicomcheck"
	"github.com/voxserve/voxserve/phantom"
	"github.com/voxserve/voxserve/tensor"
)

var testAlg = Algorithm{Name: "test", Version: "3", Software: "0.0.0-test", DeviceUID: UIDs{}.Device("test", "3")}

// study writes a series' instances to dir (in the order given) and reads
// them back as voxserve does; paths are in the series' slice order.
func study(t *testing.T, dir string, s dicomwrite.Series, order []int) (*dicom.Series, []string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	paths := make([]string, s.Slices)
	var inputs []dicom.Input
	for _, k := range order {
		b, err := dicomwrite.Encode(s.Slice(k))
		require.NoError(t, err)
		paths[k] = filepath.Join(dir, fmt.Sprintf("IM%04d.dcm", k))
		require.NoError(t, os.WriteFile(paths[k], b, 0o644))
		inputs = append(inputs, dicom.Input{Source: paths[k], Data: b})
	}
	all, _, err := dicom.ReadStudy(inputs, dicom.Options{})
	require.NoError(t, err)
	require.Len(t, all, 1)
	return all[0], paths
}

func writeNpy(t *testing.T, path string, dims [3]int, v []uint8) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, tensor.WriteNpy(f, &tensor.Tensor{DType: tensor.Uint8, Shape: []int64{int64(dims[0]), int64(dims[1]), int64(dims[2])}, Data: v}))
}

// volumeOrder maps the reader's volume slices to the written slices by SOP
// Instance UID: the truth is indexed by written slice.
func volumeLabels(t *testing.T, s *dicom.Series, src dicomwrite.Series, truth []uint8) []uint8 {
	t.Helper()
	plane := src.Rows * src.Cols
	byUID := map[string]int{}
	for k := 0; k < src.Slices; k++ {
		byUID[src.Slice(k).SOPUID] = k
	}
	out := make([]uint8, len(truth))
	for z, ref := range s.Slices {
		k, ok := byUID[ref.SOPInstanceUID]
		require.True(t, ok)
		copy(out[z*plane:(z+1)*plane], truth[k*plane:(k+1)*plane])
	}
	return out
}

// validate runs dciodvfy on every object and highdicom on the lot.
func validate(t *testing.T, m dicomcheck.Manifest) dicomcheck.Result {
	t.Helper()
	for _, p := range []string{m.SEG, m.SR} {
		if p == "" {
			continue
		}
		errs, warns := dicomcheck.Dciodvfy(t, p)
		assert.Empty(t, errs, "dciodvfy errors in %s", filepath.Base(p))
		assert.Empty(t, warns, "dciodvfy warnings in %s not in dicomcheck.AcceptedWarnings", filepath.Base(p))
	}
	r := dicomcheck.Highdicom(t, m)
	assert.Empty(t, r.Errors, "highdicom/pydicom found problems")
	return r
}

func segmentsFor(labels map[int]string) ([]Segment, map[string]int) {
	var values []int
	for v := range labels {
		values = append(values, v)
	}
	sort.Ints(values)
	var segs []Segment
	numbers := map[string]int{}
	for i, v := range values {
		segs = append(segs, Segment{Label: labels[v], Category: Code{"91723000", "SCT", "Anatomical Structure"},
			Type: LocalCode(labels[v])})
		numbers[strconv.Itoa(i+1)] = v
	}
	return segs, numbers
}

// relabel turns truth values into 1..n in the order of sorted values.
func relabel(v []uint8, labels map[int]string) []uint8 {
	var values []int
	for x := range labels {
		values = append(values, x)
	}
	sort.Ints(values)
	idx := map[uint8]uint8{}
	for i, x := range values {
		idx[uint8(x)] = uint8(i + 1)
	}
	out := make([]uint8, len(v))
	for i, x := range v {
		out[i] = idx[x]
	}
	return out
}

// TestPhantomOutputs writes an SR and a SEG for each phantom kind from its
// ground-truth labels and validates them with dciodvfy and highdicom.
func TestPhantomOutputs(t *testing.T) {
	for _, kind := range phantom.Kinds() {
		t.Run(string(kind), func(t *testing.T) {
			opts := phantom.Options{Seed: 7, Matrix: 64, SliceThickness: 5}
			pos := true
			opts.Positive = &pos
			if kind == phantom.ChestXR {
				opts.Matrix = 128
			}
			c, err := phantom.Generate(kind, opts)
			require.NoError(t, err)
			dir := t.TempDir()
			order := make([]int, c.Series.Slices)
			for i := range order {
				order[i] = len(order) - 1 - i // written in reverse: the reader must sort
			}
			series, paths := study(t, filepath.Join(dir, "src"), c.Series, order)
			src := SourceFromSeries(series)
			vol := volumeLabels(t, series, c.Series, c.Labels)
			segs, numbers := segmentsFor(c.Truth.Labels)
			opt := Options{Now: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
			seg, err := SEG(src, []LabelMap{{Voxels: relabel(vol, c.Truth.Labels), Segments: segs}}, testAlg, opt)
			require.NoError(t, err)
			rep := Report{Findings: []Finding{{Label: "finding", Code: &Code{"36118008", "SCT", "Pneumothorax"}, Probability: 0.9, Threshold: 0.5, Present: true}},
				Triage: "urgent"}
			var want []dicomcheck.ManifestMeasure
			for _, s := range segs {
				m := Measurement{Label: s.Label, Name: "volume", Kind: "volume", Value: 12.345678, Unit: "mL"}
				rep.Measurements = append(rep.Measurements, m)
				want = append(want, dicomcheck.ManifestMeasure{Label: s.Label, Meaning: "Volume", Unit: "mL", Value: m.Value})
			}
			sr, err := SR(src, rep, seg, testAlg, opt)
			require.NoError(t, err)
			segPath, srPath := filepath.Join(dir, "seg.dcm"), filepath.Join(dir, "sr.dcm")
			require.NoError(t, os.WriteFile(segPath, seg.Bytes, 0o644))
			require.NoError(t, os.WriteFile(srPath, sr.Bytes, 0o644))
			truthPath := filepath.Join(dir, "labels.npy")
			writeNpy(t, truthPath, c.Truth.Dims, c.Labels)
			r := validate(t, dicomcheck.Manifest{Source: paths, TruthLabels: truthPath, SEG: segPath, Segments: numbers,
				SR: srPath, Measurements: want, Findings: []dicomcheck.ManifestFinding{{Label: "finding", Present: true}}, Triage: "urgent"})
			t.Logf("%s: checked %v", kind, r.Checked)
		})
	}
}

// TestSEGGeometries places an asymmetric label (an L shape, so a flip or a
// shift shows) in series of different orientations and slice orders; the
// SEG read back in patient space must put it where the truth is.
func TestSEGGeometries(t *testing.T) {
	rot := func(deg float64) [6]float64 {
		a, b := deg*math.Pi/180, 30*math.Pi/180 // in-plane rotation, then a 30 degree tilt
		return [6]float64{math.Cos(a), math.Sin(a), 0, -math.Sin(a) * math.Cos(b), math.Cos(a) * math.Cos(b), -math.Sin(b)}
	}
	for _, tc := range []struct {
		name   string
		orient [6]float64
		rev    bool
	}{
		{"axial", [6]float64{1, 0, 0, 0, 1, 0}, false},
		{"axial reversed order", [6]float64{1, 0, 0, 0, 1, 0}, true},
		{"flipped rows and columns", [6]float64{-1, 0, 0, 0, -1, 0}, false},
		{"sagittal", [6]float64{0, 1, 0, 0, 0, -1}, true},
		{"coronal", [6]float64{1, 0, 0, 0, 0, -1}, false},
		{"oblique", rot(20), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nx, ny, nz := 24, 20, 9
			lab := make([]uint8, nx*ny*nz)
			for k := 2; k < 7; k++ {
				for j := 3; j < 15; j++ {
					for i := 4; i < 8; i++ {
						lab[(k*ny+j)*nx+i] = 1 // the long bar
					}
				}
				for j := 12; j < 15; j++ {
					for i := 8; i < 18; i++ {
						lab[(k*ny+j)*nx+i] = 1 // the foot
					}
				}
			}
			lab[(6*ny+3)*nx+4] = 2 // a one-voxel second segment at one corner
			s := geometrySeries(nx, ny, nz, tc.orient)
			order := make([]int, nz)
			for i := range order {
				order[i] = i
				if tc.rev {
					order[i] = nz - 1 - i
				}
			}
			dir := t.TempDir()
			series, paths := study(t, filepath.Join(dir, "src"), s, order)
			src := SourceFromSeries(series)
			vol := volumeLabels(t, series, s, lab)
			segs := []Segment{
				{Label: "bar", Category: Code{"91723000", "SCT", "Anatomical Structure"}, Type: Code{"BAR", LocalScheme, "bar"}},
				{Label: "corner", Category: Code{"91723000", "SCT", "Anatomical Structure"}, Type: Code{"CORNER", LocalScheme, "corner"}},
			}
			for _, omit := range []bool{false, true} {
				seg, err := SEG(src, []LabelMap{{Voxels: vol, Segments: segs}}, testAlg, Options{OmitEmptyFrames: omit})
				require.NoError(t, err)
				if omit {
					assert.Equal(t, 5+1, seg.Frames, "only the frames with a segmented pixel")
				} else {
					assert.Equal(t, 2*nz, seg.Frames)
				}
				segPath := filepath.Join(dir, fmt.Sprintf("seg-%v.dcm", omit))
				require.NoError(t, os.WriteFile(segPath, seg.Bytes, 0o644))
				truthPath := filepath.Join(dir, "labels.npy")
				writeNpy(t, truthPath, [3]int{nz, ny, nx}, lab)
				r := validate(t, dicomcheck.Manifest{Source: paths, TruthLabels: truthPath, SEG: segPath,
					Segments: map[string]int{"1": 1, "2": 2}})
				assert.Equal(t, true, r.Checked["seg_geometry"], "the geometric check ran")
			}
		})
	}
}

func geometrySeries(nx, ny, nz int, orient [6]float64) dicomwrite.Series {
	return dicomwrite.Series{Rows: ny, Cols: nx, Slices: nz, Spacing: [3]float64{0.8, 0.7, 2.5},
		Origin: [3]float64{-10.5, 20.25, 33}, Orientation: orient, Slope: 1, Modality: "CT", BodyPart: "HEAD",
		StudyUID: "1.2.3.4", SeriesUID: "1.2.3.4.5", PatientName: "GEOMETRY^TEST", PatientID: "G1",
		Value: func(i, j, k int) int32 { return int32(i + j + k) }}
}

// TestFractionalSEG writes probability maps as a FRACTIONAL SEG of an
// oblique series and reads the exact values back with highdicom.
func TestFractionalSEG(t *testing.T) {
	nx, ny, nz := 16, 12, 6
	a, b := 25*math.Pi/180, 15*math.Pi/180
	s := geometrySeries(nx, ny, nz, [6]float64{math.Cos(a), math.Sin(a), 0, -math.Sin(a) * math.Cos(b), math.Cos(a) * math.Cos(b), -math.Sin(b)})
	dir := t.TempDir()
	order := []int{3, 0, 5, 1, 4, 2}
	series, paths := study(t, filepath.Join(dir, "src"), s, order)
	src := SourceFromSeries(series)
	plane := nx * ny
	// Truth in written-slice order: segment 1 a ramp on slices 1-3, segment
	// 2 a blob on slice 4; other slices empty.
	truth := [2][]uint8{make([]uint8, nz*plane), make([]uint8, nz*plane)}
	for k := 1; k <= 3; k++ {
		for p := 0; p < plane; p++ {
			truth[0][k*plane+p] = uint8((p*7 + k*31) % 256)
		}
	}
	for p := 20; p < 60; p++ {
		truth[1][4*plane+p] = uint8(255 - p)
	}
	vol := [2][]uint8{volumeLabels(t, series, s, truth[0]), volumeLabels(t, series, s, truth[1])}
	segs := []Segment{
		{Label: "ramp", Category: Code{"49755003", "SCT", "Morphologically Abnormal Structure"}, Type: LocalCode("ramp")},
		{Label: "blob", Category: Code{"49755003", "SCT", "Morphologically Abnormal Structure"}, Type: LocalCode("blob")},
	}
	fracPath := filepath.Join(dir, "fractions.npy")
	f, err := os.Create(fracPath)
	require.NoError(t, err)
	require.NoError(t, tensor.WriteNpy(f, &tensor.Tensor{DType: tensor.Uint8, Shape: []int64{2, int64(nz), int64(ny), int64(nx)},
		Data: append(append([]uint8{}, truth[0]...), truth[1]...)}))
	require.NoError(t, f.Close())
	for _, omit := range []bool{false, true} {
		lm := LabelMap{Voxels: make([]uint8, nz*plane), Segments: segs, Fractions: [][]uint8{vol[0], vol[1]}}
		seg, err := SEG(src, []LabelMap{lm}, testAlg, Options{OmitEmptyFrames: omit})
		require.NoError(t, err)
		if omit {
			assert.Equal(t, 3+1, seg.Frames)
		} else {
			assert.Equal(t, 2*nz, seg.Frames)
		}
		p := filepath.Join(dir, fmt.Sprintf("seg-%v.dcm", omit))
		require.NoError(t, os.WriteFile(p, seg.Bytes, 0o644))
		r := validate(t, dicomcheck.Manifest{Source: paths, SEG: p, Segments: map[string]int{"1": 1, "2": 2}, Fractions: fracPath})
		assert.Equal(t, true, r.Checked["seg_geometry"])
	}
	_, err = SEG(src, []LabelMap{{Voxels: make([]uint8, nz*plane), Segments: segs, Fractions: [][]uint8{vol[0]}}}, testAlg, Options{})
	assert.ErrorContains(t, err, "1 fraction maps for 2 segments")
}

func TestMissingTags(t *testing.T) {
	src := Source{StudyUID: "1.2", SeriesUID: "1.2.3", Dims: [3]int{2, 2, 2}, Spacing: [3]float64{1, 1, 1},
		Direction: [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1},
		Instances: []dicom.SliceRef{{SOPInstanceUID: "1.2.3.1", SOPClassUID: dicomwrite.CTImageStorage, Frame: 1},
			{SOPInstanceUID: "1.2.3.2", SOPClassUID: dicomwrite.CTImageStorage, Frame: 1}}}
	maps := []LabelMap{{Voxels: make([]uint8, 8), Segments: []Segment{{Label: "x"}}}}
	_, err := SEG(src, maps, testAlg, Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "(0020,0052) Frame of Reference UID")

	noStudy := src
	noStudy.StudyUID = ""
	_, err = SR(noStudy, Report{Findings: []Finding{{Label: "x"}}}, nil, testAlg, Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "(0020,000D) Study Instance UID")

	noClass := src
	noClass.FrameOfReferenceUID = "1.2.9"
	noClass.Instances = []dicom.SliceRef{{SOPInstanceUID: "1.2.3.1", Frame: 1}, {SOPInstanceUID: "1.2.3.2", Frame: 1}}
	_, err = SEG(noClass, maps, testAlg, Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "(0008,0016) SOP Class UID")
}

func TestUIDs(t *testing.T) {
	for _, root := range []string{"", "2.25", "1.2.826.0.1.3680043.10.1234", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18"} {
		u := UIDs{Root: root}
		a, b := u.New(), u.New()
		assert.NotEqual(t, a, b)
		for _, x := range []string{a, b, u.Device("ich", "1")} {
			assert.LessOrEqual(t, len(x), 64, x)
			assert.NoError(t, CheckUID(x), x)
		}
		assert.Equal(t, u.Device("ich", "1"), u.Device("ich", "1"), "stable per bundle version")
		assert.NotEqual(t, u.Device("ich", "1"), u.Device("ich", "2"))
	}
	for _, bad := range []string{"1.02.3", "abc", "1..2", strings.Repeat("1.", 25) + "1"} {
		assert.Error(t, CheckRoot(bad), bad)
	}
}

func TestDecimal(t *testing.T) {
	for _, v := range []float64{0, 1, -1, 12.345678, 1e-12, 123456789012345.6, -0.000123456789, math.Pi * 1e20} {
		s := decimal(v)
		assert.LessOrEqual(t, len(s), 16, s)
		got, err := strconv.ParseFloat(s, 64)
		require.NoError(t, err)
		assert.InEpsilon(t, v+1e-300, got+1e-300, 1e-6, s)
	}
}

// packBits against a bit-by-bit reference, on offsets that are and are not
// byte-aligned.
func TestPackBits(t *testing.T) {
	vox := make([]uint8, 203)
	for i := range vox {
		vox[i] = uint8((i * 7 / 5) % 3)
	}
	for _, off := range []int{0, 3, 8, 64, 77} {
		for _, value := range []uint8{1, 2} {
			got := make([]byte, 64)
			want := make([]byte, 64)
			packBits(got, off, vox, value)
			for p, v := range vox {
				if v == value {
					want[(off+p)/8] |= 1 << ((off + p) % 8)
				}
			}
			assert.Equal(t, want, got, "off %d value %d", off, value)
		}
	}
}

// TestSEGOfMultiFrameSource: an enhanced (multi-frame) CT whose frames are
// stored out of spatial order. Each SEG frame must reference its source
// frame by number, and sit at that frame's position.
func TestSEGOfMultiFrameSource(t *testing.T) {
	nx, ny, nz := 16, 12, 7
	s := geometrySeries(nx, ny, nz, [6]float64{1, 0, 0, 0, 0, -1}) // coronal
	order := []int{3, 0, 6, 1, 5, 2, 4}
	b, err := s.EncodeEnhanced(order)
	require.NoError(t, err)
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "enhanced.dcm")
	require.NoError(t, os.WriteFile(srcPath, b, 0o644))
	all, _, err := dicom.ReadStudy([]dicom.Input{{Source: srcPath, Data: b}}, dicom.Options{})
	require.NoError(t, err)
	require.Len(t, all, 1)
	src := SourceFromSeries(all[0])
	require.Len(t, src.Instances, nz)

	// Label: a block on volume slices 2-4, and a single voxel on slice 6.
	plane := nx * ny
	vol := make([]uint8, nz*plane)
	for k := 2; k <= 4; k++ {
		for j := 3; j < 8; j++ {
			for i := 2; i < 9; i++ {
				vol[k*plane+j*nx+i] = 1
			}
		}
	}
	vol[6*plane+5*nx+11] = 1
	seg, err := SEG(src, []LabelMap{{Voxels: vol, Segments: []Segment{{Label: "block",
		Category: Code{"91723000", "SCT", "Anatomical Structure"}, Type: LocalCode("block")}}}}, testAlg, Options{})
	require.NoError(t, err)
	segPath := filepath.Join(dir, "seg.dcm")
	require.NoError(t, os.WriteFile(segPath, seg.Bytes, 0o644))
	errs, warns := dicomcheck.Dciodvfy(t, segPath)
	assert.Empty(t, errs)
	assert.Empty(t, warns)

	// Independently: highdicom places the SEG by its own geometry; pydicom
	// reads the source frames' positions; every segmented voxel must fall
	// on a labelled voxel of the source frame at that position.
	r := dicomcheck.HighdicomMultiFrame(t, srcPath, segPath, vol, [3]int{nz, ny, nx})
	assert.Empty(t, r.Errors)
	assert.Equal(t, float64(3*5*7+1), r.Checked["segmented_voxels"])
}

func TestTruncateKeepsCharacters(t *testing.T) {
	assert.Equal(t, "abc", truncate("abc", 64))
	s := strings.Repeat("é", 40) // 80 bytes
	got := truncate(s, 63)
	assert.Equal(t, 62, len(got))
	assert.True(t, utf8.ValidString(got))
}

// TestOmittedSegment: a label map value marked Omit (a model's background
// class) is no segment: the others are numbered from 1 without it, empty
// frames are found for the right segments, and a map of omitted segments
// alone is refused.
func TestOmittedSegment(t *testing.T) {
	nx, ny, nz := 8, 6, 4
	series, _ := study(t, t.TempDir(), geometrySeries(nx, ny, nz, [6]float64{1, 0, 0, 0, 1, 0}), []int{0, 1, 2, 3})
	src := SourceFromSeries(series)
	vox := make([]uint8, nx*ny*nz)
	for k := 1; k < 3; k++ { // value 2 on slices 1 and 2; value 3 on slice 3; value 1 nowhere
		vox[k*nx*ny+5] = 2
	}
	vox[3*nx*ny+7] = 3
	lesion := Code{"52988006", "SCT", "Lesion"}
	segs := []Segment{{Label: "background", Omit: true}, {Label: "lesion", Category: lesion, Type: lesion}, {Label: "cyst", Category: lesion, Type: lesion}}
	for _, omitEmpty := range []bool{false, true} {
		seg, err := SEG(src, []LabelMap{{Voxels: vox, Segments: segs}}, testAlg, Options{OmitEmptyFrames: omitEmpty})
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"lesion": 1, "cyst": 2}, seg.Numbers)
		if omitEmpty {
			assert.Equal(t, 3, seg.Frames, "lesion on two slices, cyst on one")
		} else {
			assert.Equal(t, 2*nz, seg.Frames, "a frame per slice for each of the two segments")
		}
		p := filepath.Join(t.TempDir(), "seg.dcm")
		require.NoError(t, os.WriteFile(p, seg.Bytes, 0o644))
		errs, warns := dicomcheck.Dciodvfy(t, p)
		assert.Empty(t, errs)
		assert.Empty(t, warns)
	}
	_, err := SEG(src, []LabelMap{{Voxels: vox, Segments: []Segment{{Label: "background", Omit: true}}}}, testAlg, Options{})
	assert.ErrorContains(t, err, "no segment that is not omitted")
}
