package dicomout

import (
	"fmt"
	"testing"

	"github.com/voxserve/voxserve/dicom"
)

// BenchmarkSEG512 encodes a binary SEG of a 512x512x300 CT with one
// segment (a block on a third of the slices) and the SR that references it:
// the DICOM-output share of a head CT's end-to-end time.
func BenchmarkSEG512(b *testing.B) {
	nx, ny, nz := 512, 512, 300
	src := Source{StudyUID: "1.2.3", SeriesUID: "1.2.3.4", FrameOfReferenceUID: "1.2.3.9", Modality: "CT",
		Dims: [3]int{nz, ny, nx}, Spacing: [3]float64{0.488, 0.488, 0.625}, Direction: [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1}}
	for k := 0; k < nz; k++ {
		src.Instances = append(src.Instances, dicom.SliceRef{SOPInstanceUID: fmt.Sprintf("1.2.3.4.%d", k+1), SOPClassUID: "1.2.840.10008.5.1.4.1.1.2", Frame: 1})
	}
	vox := make([]uint8, nx*ny*nz)
	for k := 100; k < 200; k++ {
		for j := 200; j < 260; j++ {
			for i := 200; i < 280; i++ {
				vox[(k*ny+j)*nx+i] = 1
			}
		}
	}
	maps := []LabelMap{{Voxels: vox, Segments: []Segment{{Label: "hemorrhage", Category: Code{"49755003", "SCT", "Morphologically Abnormal Structure"}, Type: Code{"50960005", "SCT", "Hemorrhage"}}}}}
	rep := Report{Findings: []Finding{{Label: "ich", Probability: 0.9, Threshold: 0.5, Present: true}},
		Measurements: []Measurement{{Label: "hemorrhage", Name: "volume", Kind: "volume", Value: 11.5, Unit: "mL"}}, Triage: "urgent"}
	for _, omit := range []bool{false, true} {
		b.Run(fmt.Sprintf("omit-empty=%v", omit), func(b *testing.B) {
			for b.Loop() {
				seg, err := SEG(src, maps, testAlg, Options{OmitEmptyFrames: omit})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := SR(src, rep, seg, testAlg, Options{}); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(seg.Bytes)))
			}
		})
	}
}
