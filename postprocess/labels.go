package postprocess

import (
	"math"

	"github.com/voxserve/voxserve/preprocess"
	"github.com/voxserve/voxserve/volume"
)

// CPULabels maps mask outputs back onto the study's grid and labels them
// on the CPU: the preprocess.LabelAccelerator the server uses where there
// is no GPU, and the reference the GPU's labels are checked against.
type CPULabels struct{}

var _ preprocess.LabelAccelerator = CPULabels{}

// Name implements preprocess.LabelAccelerator.
func (CPULabels) Name() string { return "cpu" }

// SourceLabels implements preprocess.LabelAccelerator: LabelVoxels and
// RemoveSmallComponents on the channels mapped to the source grid. Where
// the label is 0 whenever every channel is below its threshold (sigmoids,
// or probabilities), rows that stay below are skipped
// (preprocess.SourceLabelsBelow), with the same labels.
func (CPULabels) SourceLabels(ch *preprocess.Channels, model, source volume.Geometry, size [3]int, activation string, thresholds []float64, minVoxels int) ([]uint8, error) {
	dims := [3]int{size[2], size[1], size[0]}
	label := func(v []float32, channels, n int, out []uint8) {
		LabelVoxels(v, 1, channels, n, activation, thresholds, out)
	}
	cleanup := func(lab []uint8) { RemoveSmallComponents(lab, dims, minVoxels) }
	if below, ok := belowThresholds(activation, ch.C, thresholds); ok {
		return preprocess.SourceLabelsBelow(ch, model, source, size, below, label, cleanup), nil
	}
	return preprocess.SourceLabels(ch, model, source, size, label, cleanup), nil
}

// belowThresholds are the mapped values under which LabelVoxels labels a
// voxel 0 when every channel is under its own: the thresholds' logits for
// sigmoids, the thresholds for probabilities (no activation, or a softmax
// over one channel, which is not applied). A softmax over several channels
// couples them: no such bound.
func belowThresholds(activation string, channels int, thresholds []float64) ([]float32, bool) {
	if len(thresholds) != channels || (activation == "softmax" && channels > 1) {
		return nil, false
	}
	below := make([]float32, channels)
	for c, t := range thresholds {
		if !(t > 0 && t < 1) {
			return nil, false
		}
		below[c] = float32(t)
		if activation == "sigmoid" {
			below[c] = float32(math.Log(t / (1 - t)))
		}
	}
	return below, true
}
