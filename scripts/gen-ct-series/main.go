// Command gen-ct-series writes a synthetic CT series (int16, rescale
// -1024) for benchmarks: gen-ct-series DIR [ROWS COLS SLICES].
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/voxserve/voxserve/dicom/dicomwrite"
)

func main() {
	if len(os.Args) != 2 && len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: gen-ct-series DIR [ROWS COLS SLICES]")
		os.Exit(2)
	}
	rows, cols, slices := 512, 512, 300
	if len(os.Args) == 5 {
		rows, _ = strconv.Atoi(os.Args[2])
		cols, _ = strconv.Atoi(os.Args[3])
		slices, _ = strconv.Atoi(os.Args[4])
	}
	s := BenchSeries(rows, cols, slices)
	if err := os.MkdirAll(os.Args[1], 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for k := 0; k < slices; k++ {
		b, err := dicomwrite.Encode(s.Slice(k))
		if err == nil {
			err = os.WriteFile(filepath.Join(os.Args[1], fmt.Sprintf("IM%04d.dcm", k)), b, 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

// BenchSeries is a head-CT-like series: air, a skull ring, brain.
func BenchSeries(rows, cols, slices int) dicomwrite.Series {
	return dicomwrite.Series{
		Rows: rows, Cols: cols, Slices: slices, Spacing: [3]float64{0.45, 0.45, 0.625}, Origin: [3]float64{-115, -115, -90},
		Orientation: [6]float64{1, 0, 0, 0, 1, 0}, Slope: 1, Intercept: -1024, Modality: "CT", BodyPart: "HEAD",
		StudyUID: "1.2.826.0.1.3680043.10.1", SeriesUID: "1.2.826.0.1.3680043.10.1.1",
		Value: func(i, j, k int) int32 {
			dx, dy := float64(i-cols/2)/float64(cols/2), float64(j-rows/2)/float64(rows/2)
			r := dx*dx + dy*dy
			switch {
			case r > 0.8:
				return 24 // air
			case r > 0.68:
				return 1024 + 1200 + int32((i*7+j*3+k)%50) // bone
			default:
				return 1024 + 35 + int32((i*13+j*7+k*3)%9) // brain
			}
		},
	}
}
