package dicomout

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/voxserve/voxserve/dicom"
	"github.com/voxserve/voxserve/tensor"
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

// BenchmarkSEGFromSeries builds the binary SEG of the series in
// $VOXSERVE_BENCH_DIR from the mask in $VOXSERVE_BENCH_MASK (a uint8 .npy
// in volume order): what bench/seg_vs_highdicom.sh compares with highdicom.
// The series is read once, outside the timing.
func BenchmarkSEGFromSeries(b *testing.B) {
	dir, maskPath := os.Getenv("VOXSERVE_BENCH_DIR"), os.Getenv("VOXSERVE_BENCH_MASK")
	if dir == "" || maskPath == "" {
		b.Skip("set VOXSERVE_BENCH_DIR and VOXSERVE_BENCH_MASK (bench/seg_vs_highdicom.sh does)")
	}
	paths, _ := filepath.Glob(filepath.Join(dir, "*.dcm"))
	var inputs []dicom.Input
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		inputs = append(inputs, dicom.Input{Source: p, Data: data})
	}
	series, _, err := dicom.ReadStudy(inputs, dicom.Options{})
	if err != nil || len(series) != 1 {
		b.Fatalf("%v (%d series)", err, len(series))
	}
	f, err := os.Open(maskPath)
	if err != nil {
		b.Fatal(err)
	}
	mask, err := tensor.ReadNpy(f, 1<<32)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	maps := []LabelMap{{Voxels: mask.Data, Segments: []Segment{{Label: "hemorrhage",
		Category: Code{"49755003", "SCT", "Morphologically Abnormal Structure"}, Type: Code{"50960005", "SCT", "Hemorrhage"}}}}}
	src := SourceFromSeries(series[0])
	for b.Loop() {
		seg, err := SEG(src, maps, testAlg, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(seg.Bytes)))
	}
}
