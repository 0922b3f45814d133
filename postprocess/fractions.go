package postprocess

import (
	"fmt"
	"math"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/tensor"
)

// MaxFraction is the value that stands for probability 1 in Fractions (a
// DICOM fractional SEG's Maximum Fractional Value).
const MaxFraction = 255

// Fractions turns a mask output on the study grid ([1, channels, z, y, x]
// or [1, channels, y, x]) into each label's probability after the output's
// activation, quantized to 0..MaxFraction: the content of a fractional SEG.
func Fractions(decl bundle.Output, out *tensor.Tensor) ([][]uint8, error) {
	if len(out.Shape) < 3 || out.Shape[0] != 1 {
		return nil, fmt.Errorf("mask output %q has shape %v; want [1, channels, spatial...] on the study grid", decl.Name, out.Shape)
	}
	channels := int(out.Shape[1])
	if channels != len(decl.Labels) {
		return nil, fmt.Errorf("mask output %q has %d channels, bundle declares %d labels", decl.Name, channels, len(decl.Labels))
	}
	v, _, err := tensor.Float32View(out)
	if err != nil {
		return nil, err
	}
	n := len(v) / channels
	fr := make([][]uint8, channels)
	for c := range fr {
		fr[c] = make([]uint8, n)
	}
	probs := make([]float64, channels)
	act := channels > 1 || decl.Activation == "sigmoid"
	for i := 0; i < n; i++ {
		for c := range probs {
			probs[c] = float64(v[c*n+i])
		}
		if act {
			activate(decl.Activation, probs)
		}
		for c, p := range probs {
			if math.IsNaN(p) {
				p = 0
			}
			fr[c][i] = uint8(math.Round(math.Min(math.Max(p, 0), 1) * MaxFraction))
		}
	}
	return fr, nil
}
