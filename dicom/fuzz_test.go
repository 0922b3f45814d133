package dicom

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
)

func seedFiles(f *testing.F) [][]byte {
	var seeds [][]byte
	src := ctSeries()
	src.Slices = 2
	files, err := src.Encode()
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, files...)
	mono1 := ctSeries().Slice(0)
	mono1.Photometric, mono1.BitsStored = "MONOCHROME1", 12
	if b, err := dicomwrite.Encode(mono1); err == nil {
		seeds = append(seeds, b)
	}
	// Real files where present: pydicom's decodable grayscale set.
	for _, name := range []string{"CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "JPGExtended.dcm", "image_dfl.dcm", "rtdose.dcm"} {
		if b, err := os.ReadFile(filepath.Join("..", ".venv", "lib", "python3.11", "site-packages", "pydicom", "data", "test_files", name)); err == nil && len(b) < 1<<20 {
			seeds = append(seeds, b)
		}
	}
	return seeds
}

// FuzzRead feeds arbitrary bytes to the instance reader and decoder: errors
// are fine, panics and unbounded allocations are not.
func FuzzRead(f *testing.F) {
	for _, s := range seedFiles(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := Read("fuzz.dcm", data)
		if err != nil {
			return
		}
		dst := make([]float32, in.Pixels())
		for i := 0; i < in.NumberOfFrames && i < 4; i++ {
			_ = in.DecodeFrame(i, dst)
		}
	})
}

// FuzzReadStudy assembles a series from two real slices and one fuzzed one.
func FuzzReadStudy(f *testing.F) {
	seeds := seedFiles(f)
	for _, s := range seeds {
		f.Add(s)
	}
	base := seeds[:2]
	f.Fuzz(func(t *testing.T, data []byte) {
		in := []Input{{"a", base[0]}, {"b", base[1]}, {"c", data}}
		series, _, err := ReadStudy(in, Options{})
		if err != nil {
			return
		}
		for _, s := range series {
			if err := s.Volume.Validate(); err != nil {
				t.Fatalf("assembled an invalid volume: %v", err)
			}
		}
	})
}
