package dicom

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// JPEG baseline frames, one per fragment or split over fragments, decode
// through the instance's encapsulated path.
func TestEncapsulatedJPEGBaseline(t *testing.T) {
	img := image.NewGray(image.Rect(0, 0, 16, 8))
	for y := 0; y < 8; y++ {
		for x := 0; x < 16; x++ {
			img.SetGray(x, y, color.Gray{uint8(x * 16)})
		}
	}
	var buf bytes.Buffer
	require.NoError(t, jpeg.Encode(&buf, img, &jpeg.Options{Quality: 100}))
	frame := buf.Bytes()
	half := len(frame) / 2
	for _, tc := range []struct {
		name      string
		frames    int
		fragments [][]byte
	}{
		{"one fragment", 1, [][]byte{frame}},
		{"split frame", 1, [][]byte{frame[:half], frame[half:]}},
		{"two frames, split", 2, [][]byte{frame[:half], frame[half:], frame}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := &Instance{Source: "x", TransferSyntax: JPEGBaseline, Rows: 8, Columns: 16, NumberOfFrames: tc.frames,
				BitsAllocated: 8, BitsStored: 8, SamplesPerPixel: 1, Photometric: "MONOCHROME2", fragments: tc.fragments}
			for f := 0; f < tc.frames; f++ {
				v, err := in.StoredFrame(f, nil)
				require.NoError(t, err)
				for x := 0; x < 16; x++ {
					assert.InDelta(t, x*16, v[3*16+x], 3, fmt.Sprintf("frame %d x %d", f, x))
				}
			}
		})
	}
	in := &Instance{Source: "x", TransferSyntax: JPEGBaseline, Rows: 9, Columns: 16, NumberOfFrames: 1,
		BitsAllocated: 8, BitsStored: 8, SamplesPerPixel: 1, Photometric: "MONOCHROME2", fragments: [][]byte{frame}}
	_, err := in.StoredFrame(0, nil)
	assert.ErrorContains(t, err, "JPEG is 16x8, the instance says 16x9")
	in.NumberOfFrames = 3
	_, err = in.StoredFrame(0, nil)
	assert.ErrorContains(t, err, "1 fragments cannot be matched to 3 frames")
}
