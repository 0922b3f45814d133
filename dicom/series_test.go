package dicom

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
	"github.com/voxserve/voxserve/tensor"
)

func ctSeries() dicomwrite.Series {
	return dicomwrite.Series{
		Rows: 6, Cols: 5, Slices: 7, Spacing: [3]float64{0.7, 0.8, 2.5}, Origin: [3]float64{-120, -110.5, 33},
		Orientation: [6]float64{1, 0, 0, 0, 1, 0}, Slope: 1, Intercept: -1024, Modality: "CT", BodyPart: "HEAD",
		StudyUID: "1.2.3", SeriesUID: "1.2.3.4",
		Value: func(i, j, k int) int32 { return int32(1000 + 100*k + 10*j + i) },
	}
}

func inputs(t *testing.T, files [][]byte) []Input {
	t.Helper()
	out := make([]Input, len(files))
	for i, f := range files {
		out[i] = Input{Source: fmt.Sprintf("f%02d.dcm", i), Data: f}
	}
	return out
}

func voxels(t *testing.T, s *Series) []float32 {
	t.Helper()
	v, err := s.Volume.Float32()
	require.NoError(t, err)
	return v
}

func TestAssembleSortsAndRescales(t *testing.T) {
	src := ctSeries()
	files, err := src.Encode()
	require.NoError(t, err)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(files), func(i, j int) { files[i], files[j] = files[j], files[i] })

	series, skipped, err := ReadStudy(inputs(t, files), Options{})
	require.NoError(t, err)
	assert.Empty(t, skipped)
	require.Len(t, series, 1)
	s := series[0]
	assert.Equal(t, [3]int64{7, 6, 5}, s.Volume.Dims)
	assert.Equal(t, [3]float64{0.7, 0.8, 2.5}, roundGeo(s.Volume.Geometry.Spacing))
	assert.Equal(t, [3]float64{-120, -110.5, 33}, s.Volume.Geometry.Origin)
	assert.Equal(t, [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}, s.Volume.Geometry.Direction)
	assert.Empty(t, s.Problems)
	v := voxels(t, s)
	for k := 0; k < 7; k++ {
		assert.Equal(t, fmt.Sprintf("1.2.3.4.%d", k+1), s.Slices[k].SOPInstanceUID)
		for j := 0; j < 6; j++ {
			for i := 0; i < 5; i++ {
				require.Equal(t, float32(1000+100*k+10*j+i-1024), v[(k*6+j)*5+i])
			}
		}
	}
	assert.Equal(t, "CT", s.Modality)
	assert.Equal(t, "HEAD", s.BodyPart)
}

func roundGeo(v [3]float64) [3]float64 {
	for i := range v {
		v[i] = math.Round(v[i]*1e6) / 1e6
	}
	return v
}

func TestAssembleOblique(t *testing.T) {
	src := ctSeries()
	c, s := math.Cos(0.3), math.Sin(0.3)
	// Rotated about the x axis: rows tilt into z.
	src.Orientation = [6]float64{1, 0, 0, 0, c, s}
	files, err := src.Encode()
	require.NoError(t, err)
	// Reverse order: sorting must use the projection on the normal.
	for i, j := 0, len(files)-1; i < j; i, j = i+1, j-1 {
		files[i], files[j] = files[j], files[i]
	}
	series, _, err := ReadStudy(inputs(t, files), Options{StrictSpacing: true})
	require.NoError(t, err)
	g := series[0].Volume.Geometry
	n := src.Normal()
	for i := 0; i < 3; i++ {
		assert.InDelta(t, n[i], g.Direction[6+i], 1e-6)
	}
	assert.InDelta(t, 2.5, g.Spacing[2], 1e-6)
	assert.InDelta(t, src.Origin[1], g.Origin[1], 1e-6)
	assert.Equal(t, "1.2.3.4.1", series[0].Slices[0].SOPInstanceUID)
}

func TestSpacingProblems(t *testing.T) {
	src := ctSeries()
	files, err := src.Encode()
	require.NoError(t, err)
	missing := append(append([][]byte{}, files[:3]...), files[4:]...)
	series, _, err := ReadStudy(inputs(t, missing), Options{})
	require.NoError(t, err)
	assert.Equal(t, []string{"1 missing slices (gaps of a multiple of the 2.500 mm spacing)"}, series[0].Problems)
	_, _, err = ReadStudy(inputs(t, missing), Options{StrictSpacing: true})
	assert.ErrorContains(t, err, "series 1.2.3.4: 1 missing slices")

	// Uneven: move one slice by 1 mm.
	sl := src.Slice(3)
	sl.Position[2] += 1
	b, err := dicomwrite.Encode(sl)
	require.NoError(t, err)
	uneven := append([][]byte{}, files...)
	uneven[3] = b
	series, _, err = ReadStudy(inputs(t, uneven), Options{})
	require.NoError(t, err)
	assert.Contains(t, series[0].Problems[0], "uneven slice spacing")

	// Sheared (gantry tilt): positions drift in y while the normal is z.
	shear := append([][]byte{}, files...)
	for k := range shear {
		sl := src.Slice(k)
		sl.Position[1] += 0.5 * float64(k)
		shear[k], err = dicomwrite.Encode(sl)
		require.NoError(t, err)
	}
	series, _, err = ReadStudy(inputs(t, shear), Options{})
	require.NoError(t, err)
	assert.Contains(t, strings.Join(series[0].Problems, ";"), "not stacked along the normal")
}

func TestSeriesErrors(t *testing.T) {
	src := ctSeries()
	files, err := src.Encode()
	require.NoError(t, err)
	enc := func(edit func(*dicomwrite.Slice)) []byte {
		sl := src.Slice(2)
		edit(&sl)
		b, err := dicomwrite.Encode(sl)
		require.NoError(t, err)
		return b
	}
	tests := []struct {
		name string
		bad  []byte
		want string
	}{
		{"mixed size", enc(func(s *dicomwrite.Slice) { s.Rows, s.Cols, s.Pixels = 2, 2, make([]int32, 4) }), "mixed image sizes"},
		{"mixed orientation", enc(func(s *dicomwrite.Slice) { s.Orientation = [6]float64{0, 1, 0, 0, 0, -1} }), "mixed orientations"},
		{"duplicate position", enc(func(s *dicomwrite.Slice) { s.Position = src.Slice(3).Position; s.SOPUID = "9.9" }), "at the same position"},
		{"duplicate instance", files[3], "are the same instance"},
		{"missing position", enc(func(s *dicomwrite.Slice) { s.Omit = []tag.Tag{tag.ImagePositionPatient} }), "(0020,0032) Image Position (Patient): missing"},
		{"bad orientation", enc(func(s *dicomwrite.Slice) { s.Orientation = [6]float64{1, 0, 0, 1, 0, 0} }), "mixed orientations"},
		{"mixed spacing", enc(func(s *dicomwrite.Slice) { s.PixelSpacing = [2]float64{0.5, 0.5} }), "mixed pixel spacing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append(append([][]byte{}, files[:2]...), tt.bad)
			in = append(in, files[3:]...)
			_, _, err := ReadStudy(inputs(t, in), Options{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestMonochrome1AndUnsigned(t *testing.T) {
	src := ctSeries()
	src.Slices, src.Photometric, src.Unsigned, src.Intercept, src.Modality = 1, "MONOCHROME1", true, 0, "DX"
	files, err := src.Encode()
	require.NoError(t, err)
	series, _, err := ReadStudy(inputs(t, files), Options{})
	require.NoError(t, err)
	v := voxels(t, series[0])
	assert.Equal(t, float32(65535-1000), v[0]) // inverted over the 16-bit range
}

func TestBitsStoredAndPerSliceRescale(t *testing.T) {
	src := ctSeries()
	src.Slices = 2
	// 12 bits stored, signed: 0x0FFF is -1 once sign-extended; high bits are garbage.
	src.Value = func(i, j, k int) int32 { return int32(0xF000 | 0x0FFF) }
	s0, s1 := src.Slice(0), src.Slice(1)
	s0.BitsStored, s1.BitsStored = 12, 12
	s1.Slope, s1.Intercept = 2, 10
	b0, err := dicomwrite.Encode(s0)
	require.NoError(t, err)
	b1, err := dicomwrite.Encode(s1)
	require.NoError(t, err)
	series, _, err := ReadStudy(inputs(t, [][]byte{b1, b0}), Options{})
	require.NoError(t, err)
	v := voxels(t, series[0])
	assert.Equal(t, float32(-1-1024), v[0])
	assert.Equal(t, float32(-1*2+10), v[30])
}

func TestSkipsNonImagesAndNonDICOM(t *testing.T) {
	src := ctSeries()
	files, err := src.Encode()
	require.NoError(t, err)
	sr, err := os.ReadFile(pydicomFile(t, "test-SR.dcm"))
	if err != nil {
		sr = nil
	}
	in := inputs(t, files)
	in = append(in, Input{Source: "notes.txt", Data: []byte("radiologist notes, not DICOM, long enough to be looked at .......................................................................................")})
	in = append(in, Input{Source: "empty", Data: nil})
	if sr != nil {
		in = append(in, Input{Source: "report.dcm", Data: sr})
	}
	series, skipped, err := ReadStudy(in, Options{})
	require.NoError(t, err)
	require.Len(t, series, 1)
	assert.Len(t, series[0].Slices, 7)
	var reasons []string
	for _, s := range skipped {
		reasons = append(reasons, s.Source+": "+s.Reason)
	}
	assert.Contains(t, reasons, "notes.txt: not a DICOM file")
	assert.Contains(t, reasons, "empty: not a DICOM file")
	if sr != nil {
		assert.Contains(t, reasons, "report.dcm: Structured Report: not an image instance")
	}
}

func TestBadInstances(t *testing.T) {
	good, err := dicomwrite.Encode(ctSeries().Slice(0))
	require.NoError(t, err)
	enc := func(edit func(*dicomwrite.Slice)) []byte {
		sl := ctSeries().Slice(0)
		edit(&sl)
		b, err := dicomwrite.Encode(sl)
		require.NoError(t, err)
		return b
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated", good[:len(good)-40], "not a readable DICOM file"},
		{"header only", good[:strings.LastIndex(string(good), "\xe0\x7f\x10\x00")], "(7FE0,0010) Pixel Data: missing, though the image has Rows and Columns (truncated file?)"},
		{"no rows", enc(func(s *dicomwrite.Slice) { s.Omit = []tag.Tag{tag.Rows} }), "(0028,0010) Rows: missing"},
		{"no pixel data", enc(func(s *dicomwrite.Slice) { s.Omit = []tag.Tag{tag.PixelData} }), "(7FE0,0010) Pixel Data: missing"},
		{"huge rows", patchUS(t, good, tag.Rows, 60000), "(0028,0010) Rows: 60000 is outside 1..8192"},
		{"bits allocated 1", patchUS(t, good, tag.BitsAllocated, 1), "(0028,0100) Bits Allocated: 1 is not supported"},
		{"bits stored > allocated", patchUS(t, good, tag.BitsStored, 20), "(0028,0101) Bits Stored: 20 must be between 1 and Bits Allocated (16)"},
		{"lying length", lie(good), "element (7FE0,0010) claims 4294967280 bytes"},
		{"bad slope", enc(func(s *dicomwrite.Slice) { s.Slope = 0 }), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := Read("x.dcm", tt.data)
			if tt.want == "" {
				// Slope 0 is written as 1 by dicomtest (0 means unset): fine.
				require.NoError(t, err)
				return
			}
			if err == nil {
				_, err = in.StoredFrame(0, nil)
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), "x.dcm")
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// patchUS rewrites the value of a US element in an explicit little endian file.
func patchUS(t *testing.T, data []byte, tg tag.Tag, v uint16) []byte {
	t.Helper()
	pat := []byte{byte(tg.Group), byte(tg.Group >> 8), byte(tg.Element), byte(tg.Element >> 8), 'U', 'S', 2, 0}
	i := strings.Index(string(data), string(pat))
	require.GreaterOrEqual(t, i, 0, "tag %v not found", tg)
	out := append([]byte(nil), data...)
	out[i+8], out[i+9] = byte(v), byte(v>>8)
	return out
}

func TestUpstreamTestdata(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/suyashkumar/dicom").Output()
	require.NoError(t, err)
	dir := filepath.Join(strings.TrimSpace(string(out)), "testdata")
	files, err := filepath.Glob(filepath.Join(dir, "*.dcm"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			in, err := Read(filepath.Base(f), data)
			if err != nil {
				t.Logf("refused with: %v", err)
				assert.Contains(t, err.Error(), filepath.Base(f))
				return
			}
			dst := make([]float32, in.Pixels())
			for i := 0; i < in.NumberOfFrames; i++ {
				require.NoError(t, in.DecodeFrame(i, dst))
			}
		})
	}
}

func pydicomFile(t *testing.T, name string) string {
	return filepath.Join(pydicomDir(t), name)
}

// lie sets the pixel data's value length to nearly 4 GiB in a small file.
func lie(data []byte) []byte {
	out := append([]byte(nil), data...)
	i := strings.LastIndex(string(out), "\xe0\x7f\x10\x00OW")
	out[i+8], out[i+9], out[i+10], out[i+11] = 0xF0, 0xFF, 0xFF, 0xFF
	return out
}

func TestEnhancedMultiFrame(t *testing.T) {
	src := ctSeries()
	c, s := math.Cos(0.2), math.Sin(0.2)
	src.Orientation = [6]float64{c, s, 0, -s, c, 0}
	b, err := src.EncodeEnhanced([]int{3, 0, 6, 1, 5, 2, 4}) // frames out of spatial order
	require.NoError(t, err)
	series, _, err := ReadStudy([]Input{{"enhanced.dcm", b}}, Options{StrictSpacing: true})
	require.NoError(t, err)
	require.Len(t, series, 1)
	got := series[0]
	assert.Equal(t, [3]int64{7, 6, 5}, got.Volume.Dims)
	assert.InDelta(t, 2.5, got.Volume.Geometry.Spacing[2], 1e-9)
	assert.InDelta(t, 0.7, got.Volume.Geometry.Spacing[0], 1e-9)
	assert.Equal(t, 2, got.Slices[0].Frame) // spatially first is frame 2 (slice 0)
	v := voxels(t, got)
	for k := 0; k < 7; k++ {
		require.Equal(t, float32(1000+100*k-1024), v[k*30], "slice %d", k)
	}
}

func TestProjectionRadiograph(t *testing.T) {
	src := ctSeries()
	src.Slices, src.Modality = 1, "DX"
	sl := src.Slice(0)
	sl.Omit = []tag.Tag{tag.ImagePositionPatient, tag.ImageOrientationPatient}
	b, err := dicomwrite.Encode(sl)
	require.NoError(t, err)
	series, _, err := ReadStudy([]Input{{"cxr.dcm", b}}, Options{})
	require.NoError(t, err)
	g := series[0].Volume.Geometry
	assert.Equal(t, [3]int64{1, 6, 5}, series[0].Volume.Dims)
	assert.InDelta(t, 0.7, g.Spacing[0], 1e-9)
	assert.InDelta(t, 0.8, g.Spacing[1], 1e-9)
	assert.Equal(t, [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}, g.Direction)
}

func TestRLEErrors(t *testing.T) {
	out := make([]int64, 4)
	assert.ErrorContains(t, decodeRLE(make([]byte, 10), 2, 2, 2, out), "shorter than the 64-byte header")
	hdr := make([]byte, 64)
	hdr[0] = 1
	assert.ErrorContains(t, decodeRLE(hdr, 2, 2, 2, out), "1 segments, 2 expected")
	hdr[0], hdr[4] = 1, 64
	seg := append(hdr, 1, 7, 8) // a literal run of 2 for a 4-byte frame
	assert.ErrorContains(t, decodeRLE(seg, 2, 2, 1, out), "decoded 2 bytes, frame needs 4")
	ok := append(append([]byte{}, hdr...), 0xFD, 9) // replicate 9 four times
	require.NoError(t, decodeRLE(ok, 2, 2, 1, out))
	assert.Equal(t, []int64{9, 9, 9, 9}, out)
	over := append(append([]byte{}, hdr...), 0xF0, 9) // replicate 17 times: overflows
	assert.ErrorContains(t, decodeRLE(over, 2, 2, 1, out), "overflows")
}

// lender is an Options.Voxels that records what it lends and gets back.
type lender struct {
	lent, back int
	bufs       [][]float32
}

func (l *lender) voxels(n int) ([]float32, func()) {
	b := make([]float32, n+3)[:n] // larger than asked, as a pool's buffers are
	for i := range b {
		b[i] = float32(math.NaN()) // poisoned: every value must be decoded
	}
	l.lent++
	l.bufs = append(l.bufs, b)
	return b, func() { l.back++ }
}

// Volumes decode into memory Options.Voxels lends (a GPU's page-locked
// buffers), equal to Go memory's, and go back on Release, on a failed
// study, and never twice.
func TestVoxelsLentAndReleased(t *testing.T) {
	src := ctSeries()
	files, err := src.Encode()
	require.NoError(t, err)
	plain, _, err := ReadStudy(inputs(t, files), Options{})
	require.NoError(t, err)

	var l lender
	series, _, err := ReadStudy(inputs(t, files), Options{Voxels: l.voxels})
	require.NoError(t, err)
	require.Len(t, series, 1)
	assert.Equal(t, 1, l.lent)
	assert.Equal(t, voxels(t, plain[0]), voxels(t, series[0]))
	assert.Equal(t, &l.bufs[0][0], &voxels(t, series[0])[0], "decoded in place, not copied")
	series[0].Release()
	series[0].Release()
	assert.Equal(t, 1, l.back)
	assert.Nil(t, series[0].Volume)

	// A second series that fails to assemble gives the first one's back.
	other := ctSeries()
	other.SeriesUID = "1.2.3.5"
	bad, err := other.Encode()
	require.NoError(t, err)
	bad = append(bad, bad[2]) // a slice twice: the series cannot be assembled
	l = lender{}
	_, _, err = ReadStudy(inputs(t, append(files, bad...)), Options{Voxels: l.voxels})
	require.Error(t, err)
	assert.Positive(t, l.lent, "the good series was decoded before the bad one failed: %v", err)
	assert.Equal(t, l.lent, l.back, "everything lent came back")
}

func storedLender(lent *int) func(n int) ([]int16, func()) {
	return func(n int) ([]int16, func()) {
		*lent++
		return make([]int16, n), func() {}
	}
}

// With Options.Stored, a series whose stored values fit int16 under one
// rescale keeps them (half the bytes for a GPU to upload), and its values
// in HU are exactly the float32 path's; any other series decodes to
// float32 as before.
func TestStoredInt16Volumes(t *testing.T) {
	enc := func(t *testing.T, edit func(*dicomwrite.Series), slice func(k int, s *dicomwrite.Slice)) [][]byte {
		src := ctSeries()
		src.Value = func(i, j, k int) int32 { return int32(-1500 + 997*k + 31*j + 7*i) }
		if edit != nil {
			edit(&src)
		}
		var files [][]byte
		for k := 0; k < src.Slices; k++ {
			s := src.Slice(k)
			if slice != nil {
				slice(k, &s)
			}
			b, err := dicomwrite.Encode(s)
			require.NoError(t, err)
			files = append(files, b)
		}
		return files
	}
	tests := []struct {
		name  string
		files func(t *testing.T) [][]byte
		int16 bool
	}{
		{"signed CT", func(t *testing.T) [][]byte { return enc(t, nil, nil) }, true},
		{"rescale slope 2", func(t *testing.T) [][]byte {
			return enc(t, func(s *dicomwrite.Series) { s.Slope, s.Intercept = 2, -3 }, nil)
		}, true},
		{"unsigned 12 bits, garbage above", func(t *testing.T) [][]byte {
			return enc(t, func(s *dicomwrite.Series) {
				s.Unsigned, s.Intercept = true, 0
				s.Value = func(i, j, k int) int32 { return int32(0xF000 | (100*k + 10*j + i)) }
			}, func(k int, s *dicomwrite.Slice) { s.BitsStored = 12 })
		}, true},
		{"unsigned 16 bits", func(t *testing.T) [][]byte {
			return enc(t, func(s *dicomwrite.Series) {
				s.Unsigned, s.Intercept = true, 0
				s.Value = func(i, j, k int) int32 { return int32(40000 + i) }
			}, nil)
		}, false},
		{"rescale per slice", func(t *testing.T) [][]byte {
			return enc(t, nil, func(k int, s *dicomwrite.Slice) { s.Intercept = float64(-1024 + k) })
		}, false},
		{"signed 12 bits", func(t *testing.T) [][]byte {
			return enc(t, nil, func(k int, s *dicomwrite.Slice) { s.BitsStored = 12 })
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := tt.files(t)
			plain, _, err := ReadStudy(inputs(t, files), Options{})
			require.NoError(t, err)
			lent := 0
			stored, _, err := ReadStudy(inputs(t, files), Options{Stored: storedLender(&lent)})
			require.NoError(t, err)
			vol := stored[0].Volume
			if !tt.int16 {
				assert.Equal(t, tensor.Float32, vol.Voxels.DType)
				assert.Nil(t, vol.Rescale)
				assert.Zero(t, lent)
				return
			}
			assert.Equal(t, tensor.Int16, vol.Voxels.DType)
			require.NotNil(t, vol.Rescale)
			assert.Equal(t, 1, lent)
			want := voxels(t, plain[0])
			got, shared, err := vol.Values()
			require.NoError(t, err)
			assert.False(t, shared)
			assert.Equal(t, want, got)
			asFloat, err := vol.Float32()
			require.NoError(t, err)
			assert.Equal(t, want, asFloat)
		})
	}
}
