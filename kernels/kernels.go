// Package kernels is where voxserve's CPU and GPU image operations meet:
// one interface, Ops, with a CPU implementation built on the Go reference
// code (preprocess/, postprocess/) and a CUDA implementation (build tag
// cuda) running the kernels in src/voxkernels.cu, compiled to the PTX in
// ptx/ and embedded in the binary, so that no nvcc is needed at run time.
//
// The GPU implementation must compute what the CPU one computes: exactly
// for masks, labels and copies, and within float32 rounding (relative
// error 1e-5) for arithmetic. The tests check every operation on random
// inputs on both.
package kernels

import (
	"errors"
	"fmt"
	"math"

	"github.com/voxserve/voxserve/postprocess"
	"github.com/voxserve/voxserve/preprocess"
	"github.com/voxserve/voxserve/volume"
)

// ErrUnavailable says no GPU implementation can run here: a binary built
// without the cuda tag, no driver, or no device.
var ErrUnavailable = errors.New("kernels: no CUDA device available")

// Ops are the image operations that have a CPU and a GPU implementation.
// Volumes are float32 (or int16, or uint8 labels), z-major, dims x, y, z.
type Ops interface {
	// Name says which implementation this is ("cpu", or "cuda: <device>").
	Name() string
	// WindowResampleI16 is the fused preprocessing pass: stored values
	// src (dims x, y, z) are rescaled (v*slope + intercept), resampled
	// through maps, and windowed into len(ws) channels in out.
	WindowResampleI16(src []int16, dims [3]int, slope, intercept float32, maps [3]preprocess.AxisMap, ws []preprocess.Window, out []float32) error
	// WindowResample is WindowResampleI16 on float32 values (already
	// rescaled): preprocess.Accelerator, the server's preprocessing hook.
	WindowResample(src []float32, dims [3]int, maps [3]preprocess.AxisMap, ws []preprocess.Window, out []float32) error
	// Resample resamples src through maps into out.
	Resample(src []float32, dims [3]int, maps [3]preprocess.AxisMap, out []float32) error
	// ToGrid maps src onto out's geometry (preprocess.ToGridInto).
	ToGrid(src, out *preprocess.Grid, interp preprocess.Interp) error
	// ClipScale is preprocess.ClipScale.
	ClipScale(v []float32, aMin, aMax, bMin, bMax float32) error
	// ZScore is preprocess.ZScore.
	ZScore(v []float32) (mean, std float64, err error)
	// Slabs is preprocess.SlabsTensor (r = 0 gives slices).
	Slabs(ch *preprocess.Channels, r int, out []float32) error
	// ExtractPatches runs preprocess.ExtractPatch for every patch into out.
	ExtractPatches(ch *preprocess.Channels, patches []preprocess.Patch, size [3]int, pad float32, out []float32) error
	// Aggregate stitches patch predictions ([P, C, pz, py, px], patches as
	// preprocess.Patches lists them) into a [C, z, y, x] volume.
	Aggregate(pred []float32, channels int, size, patch [3]int, overlap float64) ([]float32, error)
	// LabelMap is postprocess.LabelVoxels.
	LabelMap(v []float32, batch, channels, n int, activation string, thresholds []float64, out []uint8) error
	// RemoveSmallComponents is postprocess.RemoveSmallComponents; dims are z, y, x.
	RemoveSmallComponents(lab []uint8, dims [3]int, minVoxels int) (int, error)
	// SourceLabels is preprocess.LabelAccelerator: mask channels mapped
	// from the model grid onto the source grid, labelled and cleared of
	// components smaller than minVoxels.
	SourceLabels(ch *preprocess.Channels, model, source volume.Geometry, size [3]int, activation string, thresholds []float64, minVoxels int) ([]uint8, error)
	// LabelStats counts the voxels of each label value and sums values
	// (nil: counts only) over them.
	LabelStats(lab []uint8, values []float32) (counts [256]int64, sums [256]float64, err error)
}

// CPU is the Go reference implementation.
type CPU struct{}

var _ Ops = CPU{}

// Name implements Ops.
func (CPU) Name() string { return "cpu" }

// WindowResampleI16 implements Ops: the values rescaled to float32, then
// WindowResample.
func (c CPU) WindowResampleI16(src []int16, dims [3]int, slope, intercept float32, maps [3]preprocess.AxisMap, ws []preprocess.Window, out []float32) error {
	v := make([]float32, len(src))
	for i, x := range src {
		v[i] = float32(x)*slope + intercept
	}
	return c.WindowResample(v, dims, maps, ws, out)
}

// WindowResample implements Ops.
func (CPU) WindowResample(src []float32, dims [3]int, maps [3]preprocess.AxisMap, ws []preprocess.Window, out []float32) error {
	g := &preprocess.Grid{NX: dims[0], NY: dims[1], NZ: dims[2], V: src}
	r := &preprocess.Grid{NX: len(maps[0].W), NY: len(maps[1].W), NZ: len(maps[2].W)}
	if len(out) != len(ws)*r.Len() {
		return fmt.Errorf("kernels: output has %d values, want %d", len(out), len(ws)*r.Len())
	}
	r.V = make([]float32, r.Len())
	preprocess.ResampleMapsInto(g, r, maps)
	preprocess.Windows(r, ws, out)
	return nil
}

// Resample implements Ops.
func (CPU) Resample(src []float32, dims [3]int, maps [3]preprocess.AxisMap, out []float32) error {
	g := &preprocess.Grid{NX: dims[0], NY: dims[1], NZ: dims[2], V: src}
	r := &preprocess.Grid{NX: len(maps[0].W), NY: len(maps[1].W), NZ: len(maps[2].W), V: out}
	preprocess.ResampleMapsInto(g, r, maps)
	return nil
}

// ToGrid implements Ops.
func (CPU) ToGrid(src, out *preprocess.Grid, interp preprocess.Interp) error {
	preprocess.ToGridInto(src, out, interp)
	return nil
}

// ClipScale implements Ops.
func (CPU) ClipScale(v []float32, aMin, aMax, bMin, bMax float32) error {
	preprocess.ClipScale(v, aMin, aMax, bMin, bMax)
	return nil
}

// ZScore implements Ops.
func (CPU) ZScore(v []float32) (float64, float64, error) {
	m, s := preprocess.ZScore(v)
	return m, s, nil
}

// Slabs implements Ops.
func (CPU) Slabs(ch *preprocess.Channels, r int, out []float32) error {
	preprocess.SlabsTensor(ch, r, out)
	return nil
}

// ExtractPatches implements Ops.
func (CPU) ExtractPatches(ch *preprocess.Channels, patches []preprocess.Patch, size [3]int, pad float32, out []float32) error {
	per := ch.C * size[0] * size[1] * size[2]
	for i, p := range patches {
		preprocess.ExtractPatch(ch, p, size, pad, out[i*per:(i+1)*per])
	}
	return nil
}

// Aggregate implements Ops.
func (CPU) Aggregate(pred []float32, channels int, size, patch [3]int, overlap float64) ([]float32, error) {
	a := preprocess.NewAggregator(channels, size, patch)
	per := channels * patch[0] * patch[1] * patch[2]
	for i, p := range preprocess.Patches(size, patch, overlap) {
		if err := a.Add(p, pred[i*per:(i+1)*per]); err != nil {
			return nil, err
		}
	}
	return a.Result().V, nil
}

// LabelMap implements Ops.
func (CPU) LabelMap(v []float32, batch, channels, n int, activation string, thresholds []float64, out []uint8) error {
	postprocess.LabelVoxels(v, batch, channels, n, activation, thresholds, out)
	return nil
}

// RemoveSmallComponents implements Ops.
func (CPU) RemoveSmallComponents(lab []uint8, dims [3]int, minVoxels int) (int, error) {
	return postprocess.RemoveSmallComponents(lab, dims, minVoxels), nil
}

// SourceLabels implements Ops.
func (CPU) SourceLabels(ch *preprocess.Channels, model, source volume.Geometry, size [3]int, activation string, thresholds []float64, minVoxels int) ([]uint8, error) {
	return postprocess.CPULabels{}.SourceLabels(ch, model, source, size, activation, thresholds, minVoxels)
}

// LabelStats implements Ops.
func (CPU) LabelStats(lab []uint8, values []float32) (counts [256]int64, sums [256]float64, err error) {
	for i, l := range lab {
		counts[l]++
		if values != nil {
			sums[l] += float64(values[i])
		}
	}
	return counts, sums, nil
}

// RelErr is ‖a − b‖ / ‖b‖ in float64 (‖a‖ when b is all zeros), and +Inf
// when any value is NaN: how the tests compare GPU output with the CPU's.
func RelErr(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range a {
		if math.IsNaN(float64(a[i])) || math.IsNaN(float64(b[i])) {
			return math.Inf(1)
		}
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// ForPreprocessing picks where preprocessing's fused pass runs, for the
// --gpu flag of voxserve and voxctl: "auto" takes the GPU when one can run
// here and the CPU (nil) otherwise, "off" the CPU, "on" the GPU or an
// error. close releases the GPU; why says why the CPU was chosen.
func ForPreprocessing(mode string) (acc preprocess.Accelerator, close func() error, why string, err error) {
	none := func() error { return nil }
	switch mode {
	case "off":
		return nil, none, "--gpu off", nil
	case "auto", "on":
	default:
		return nil, none, "", fmt.Errorf("--gpu %q: want auto, on or off", mode)
	}
	g, err := Open(0)
	if err != nil {
		if mode == "on" {
			return nil, none, "", err
		}
		return nil, none, err.Error(), nil
	}
	return g, g.Close, "", nil
}
