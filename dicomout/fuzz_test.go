package dicomout

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/dicom/dicomwrite"
)

// FuzzDerivedObjects: whatever a source instance holds (odd patient
// attributes, geometry, UIDs), writing the SR and SEG of its series either
// works or fails with an error; it never panics. Objects that are written
// must read back.
func FuzzDerivedObjects(f *testing.F) {
	s := geometrySeries(8, 6, 1, [6]float64{1, 0, 0, 0, 1, 0})
	s.PatientName, s.PatientID, s.StudyDate = "DOE^JANE", "ID-1", "20250102"
	if b, err := dicomwrite.Encode(s.Slice(0)); err == nil {
		f.Add(b)
	}
	for _, name := range []string{"CT_small.dcm", "MR_small.dcm", "JPGExtended.dcm"} {
		if b, err := os.ReadFile(filepath.Join("..", ".venv", "lib", "python3.11", "site-packages", "pydicom", "data", "test_files", name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		all, _, err := dicom.ReadStudy([]dicom.Input{{Source: "fuzz.dcm", Data: data}}, dicom.Options{})
		if err != nil || len(all) != 1 {
			return
		}
		src := SourceFromSeries(all[0])
		n := src.Dims[0] * src.Dims[1] * src.Dims[2]
		if n > 1<<22 {
			return
		}
		vox := make([]uint8, n)
		for i := range vox {
			vox[i] = uint8(i % 2)
		}
		seg, err := SEG(src, []LabelMap{{Voxels: vox, Segments: []Segment{{Label: "x", Category: Code{"91723000", "SCT", "Anatomical Structure"}, Type: LocalCode("x")}}}}, testAlg, Options{})
		if err == nil {
			readsBack(t, "SEG", seg.Bytes)
		}
		rep := Report{Findings: []Finding{{Label: "x", Probability: 0.5, Threshold: 0.5, Present: true}},
			Measurements: []Measurement{{Label: "x", Name: "volume", Kind: "volume", Value: 1, Unit: "mL"}}, Triage: "urgent"}
		if sr, err := SR(src, rep, seg, testAlg, Options{}); err == nil {
			readsBack(t, "SR", sr.Bytes)
		}
	})
}

// readsBack parses an object we wrote: it must be DICOM that our reader
// classes as a non-image object (SR, SEG).
func readsBack(t *testing.T, what string, b []byte) {
	t.Helper()
	if _, err := dicom.Read(what, b); !errors.Is(err, dicom.ErrNotImage) {
		t.Fatalf("our %s does not read back as a non-image object: %v", what, err)
	}
}
