// Package postprocess turns a model's raw outputs into what a clinician's
// systems consume: findings (label, code, probability, decision) from score
// outputs and label maps from mask outputs, as the bundle declares them.
package postprocess

import (
	"fmt"
	"math"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/internal/pzlib"
	"github.com/voxserve/voxserve/tensor"
)

// Finding is one label's study-level result.
type Finding struct {
	Label       string
	Code        *bundle.Code
	Probability float64
	Threshold   float64
	Present     bool
	Output      string
}

// Mask is a label map: value i+1 marks Labels[i], 0 is background.
type Mask struct {
	Output string
	Labels []string
	// Dims are the spatial dims, with a leading batch axis when the batch
	// had more than one item.
	Dims   []int64
	Voxels []uint8
}

// Compressed returns the mask's voxels zlib-compressed, on every core
// (internal/pzlib): a 512 x 512 x 271 head CT's mask is 71 MB, which one
// core takes about 40 ms to deflate.
func (m *Mask) Compressed() []byte {
	return pzlib.Compress(m.Voxels)
}

// Result is everything derived from one run.
type Result struct {
	Findings     []Finding
	Masks        []Mask
	Measurements []Measurement
	Warnings     []string
}

// Run derives findings, masks and measurements from outputs, which are in
// the bundle's declared output order. wantMasks skips label-map work when
// neither masks nor measurements are asked for. study (nil for tensor
// inputs) gives the geometry measurements need.
func Run(spec *bundle.Spec, outputs []*tensor.Tensor, wantMasks bool, study *Study) (*Result, error) {
	return RunWith(spec, outputs, wantMasks, study, nil)
}

// MinVoxels is a mask output's speck size in voxels of the study's grid
// (0: keep every component).
func MinVoxels(decl bundle.Output, study *Study) int {
	if study == nil || decl.MinComponentMM3 <= 0 {
		return 0
	}
	g := study.Geometry
	return int(math.Ceil(decl.MinComponentMM3 / (g.Spacing[0] * g.Spacing[1] * g.Spacing[2])))
}

// RunWith is Run with label maps already made elsewhere (on the GPU) for
// some mask outputs, by output index: those are used as they are, specks
// already removed. A study with nothing in it (EmptyStudy) is answered
// negative, whatever the model made of it.
func RunWith(spec *bundle.Spec, outputs []*tensor.Tensor, wantMasks bool, study *Study, premade map[int]*Mask) (*Result, error) {
	res, err := run(spec, outputs, wantMasks, study, premade)
	if err == nil && study != nil && study.voxels() > 0 {
		if why := study.Empty(); why != "" {
			res.Negative(why)
		}
	}
	return res, err
}

func run(spec *bundle.Spec, outputs []*tensor.Tensor, wantMasks bool, study *Study, premade map[int]*Mask) (*Result, error) {
	if len(outputs) != len(spec.Outputs) {
		return nil, fmt.Errorf("model gave %d outputs, bundle declares %d", len(outputs), len(spec.Outputs))
	}
	res := &Result{}
	for i, decl := range spec.Outputs {
		out := outputs[i]
		switch decl.Kind {
		case "scores":
			f, err := findings(spec, decl, out)
			if err != nil {
				return nil, err
			}
			res.Findings = append(res.Findings, f...)
		case "mask":
			if !wantMasks {
				continue
			}
			m := premade[i]
			if m == nil {
				var err error
				if m, err = labelMap(spec, decl, out); err != nil {
					return nil, err
				}
				if minVox := MinVoxels(decl, study); minVox > 0 {
					RemoveSmallComponents(m.Voxels, maskDims(m), minVox)
				}
			}
			if len(decl.Measurements) > 0 {
				if study == nil {
					res.Warnings = append(res.Warnings, fmt.Sprintf("output %s: measurements need a volume or DICOM input (geometry); none computed", decl.Name))
				} else {
					ms, err := measure(decl, m, study)
					if err != nil {
						return nil, err
					}
					res.Measurements = append(res.Measurements, ms...)
				}
			}
			res.Masks = append(res.Masks, *m)
		}
	}
	return res, nil
}

// findings reads a [batch, labels] scores output. A study's probability per
// label is the maximum over the batch (e.g. over its slices): one positive
// slice makes a positive study.
func findings(spec *bundle.Spec, decl bundle.Output, out *tensor.Tensor) ([]Finding, error) {
	v, _, err := tensor.Float32View(out) // read only
	if err != nil {
		return nil, err
	}
	k := len(decl.Labels)
	if len(v) == 0 || len(v)%k != 0 {
		return nil, fmt.Errorf("output %q has %d values, not a multiple of its %d labels", decl.Name, len(v), k)
	}
	best := make([]float64, k)
	for i := range best {
		best[i] = math.Inf(-1)
	}
	row := make([]float64, k)
	for b := 0; b < len(v)/k; b++ {
		for j := range row {
			row[j] = float64(v[b*k+j])
		}
		activate(decl.Activation, row)
		for j, p := range row {
			best[j] = math.Max(best[j], p)
		}
	}
	fs := make([]Finding, k)
	for j, l := range decl.Labels {
		fs[j] = Finding{Label: l.Name, Code: l.Code, Probability: best[j], Threshold: l.Threshold,
			Present: best[j] >= l.Threshold, Output: decl.Name}
	}
	return fs, nil
}

func activate(kind string, v []float64) {
	switch kind {
	case "sigmoid":
		for i, x := range v {
			v[i] = 1 / (1 + math.Exp(-x))
		}
	case "softmax":
		m := math.Inf(-1)
		for _, x := range v {
			m = math.Max(m, x)
		}
		sum := 0.0
		for i, x := range v {
			v[i] = math.Exp(x - m)
			sum += v[i]
		}
		for i := range v {
			v[i] /= sum
		}
	}
}

// labelMap reads a [batch, channels, spatial...] mask output. One channel:
// voxels whose probability reaches the threshold get label 1. Several
// channels: each voxel gets its most probable channel's label if that
// probability reaches the channel's threshold.
func labelMap(spec *bundle.Spec, decl bundle.Output, out *tensor.Tensor) (*Mask, error) {
	if len(out.Shape) < 3 {
		return nil, fmt.Errorf("mask output %q has shape %v; want [batch, channels, spatial...]", decl.Name, out.Shape)
	}
	v, _, err := tensor.Float32View(out) // read only: the whole mask output
	if err != nil {
		return nil, err
	}
	batch, channels := out.Shape[0], out.Shape[1]
	if int(channels) != len(decl.Labels) {
		return nil, fmt.Errorf("mask output %q has %d channels, bundle declares %d labels", decl.Name, channels, len(decl.Labels))
	}
	spatial := out.Shape[2:]
	n, _ := tensor.NumElements(spatial)
	m := &Mask{Output: decl.Name, Voxels: make([]uint8, batch*n)}
	for _, l := range decl.Labels {
		m.Labels = append(m.Labels, l.Name)
	}
	if batch == 1 {
		m.Dims = append([]int64(nil), spatial...)
	} else {
		m.Dims = append([]int64{batch}, spatial...)
	}
	th := make([]float64, len(decl.Labels))
	for i, l := range decl.Labels {
		th[i] = l.Threshold
	}
	LabelVoxels(v, int(batch), int(channels), int(n), decl.Activation, th, m.Voxels)
	return m, nil
}

// LabelVoxels turns a [batch, channels, n] output into labels in out
// (batch*n values): each voxel gets 1 + its most probable channel (the
// first of equals) if that probability reaches the channel's threshold,
// else 0. activation ("sigmoid", "softmax" or "") is applied in float64;
// a single channel is activated only by a sigmoid.
func LabelVoxels(v []float32, batch, channels, n int, activation string, thresholds []float64, out []uint8) {
	// Voxels are independent: split them across the cores.
	par.RangeGrain(batch*n, 1<<16, func(lo, hi int) {
		labelRange(v, channels, n, activation, thresholds, out, lo, hi)
	})
}

// labelRange labels voxels [lo, hi) of the flattened batch.
func labelRange(v []float32, channels, n int, activation string, thresholds []float64, out []uint8, lo, hi int) {
	if channels == 1 && activation == "sigmoid" && thresholds[0] > 0 && thresholds[0] < 1 {
		// sigmoid(x) >= t is x >= logit(t): decide on the logit, and take
		// the exact path only within a margin of it, a million times wider
		// than float64 rounding, so the decisions are the exact path's.
		t := thresholds[0]
		xt := math.Log(t / (1 - t))
		margin := 1e-6 * (1 + math.Abs(xt))
		for e := lo; e < hi; e++ {
			x := float64(v[e])
			switch {
			case x < xt-margin:
				out[e] = 0
			case x > xt+margin:
				out[e] = 1
			case 1/(1+math.Exp(-x)) >= t:
				out[e] = 1
			default:
				out[e] = 0
			}
		}
		return
	}
	probs := make([]float64, channels)
	act := channels > 1 || activation == "sigmoid"
	for e := lo; e < hi; e++ {
		b, i := e/n, e%n
		base := b * channels * n
		for c := range probs {
			probs[c] = float64(v[base+c*n+i])
		}
		if act {
			activate(activation, probs)
		}
		best := 0
		for c := range probs {
			if probs[c] > probs[best] {
				best = c
			}
		}
		out[e] = 0
		if probs[best] >= thresholds[best] {
			out[e] = uint8(best + 1)
		}
	}
}

// EmptyStudy says why a study holds nothing to find, or "" when it holds
// something: every voxel the same value, or a CT whose voxels are all air
// (at most -900 HU).
func EmptyStudy(values []float32, modality string) string {
	if len(values) == 0 {
		return "the study has no voxels"
	}
	lo, hi := values[0], values[0]
	for _, v := range values {
		lo, hi = min(lo, v), max(hi, v)
		// Stop at the first proof of content: most studies give it early.
		if lo != hi && (modality != "CT" || hi > -900) {
			return ""
		}
	}
	return emptyWhy(lo, hi)
}

// Empty is EmptyStudy over the study's source values, float32 or stored.
// Stored values are scanned as they are: the rescale is monotonic, so the
// extremes in HU are those of the stored values, converted when they move.
func (st *Study) Empty() string {
	if st.Values != nil {
		return EmptyStudy(st.Values, st.Modality)
	}
	if len(st.Stored) == 0 {
		return "the study has no voxels"
	}
	hu := func(lo, hi int16) (float32, float32) {
		a, b := float32(lo)*st.Slope+st.Intercept, float32(hi)*st.Slope+st.Intercept
		return min(a, b), max(a, b)
	}
	lo, hi := st.Stored[0], st.Stored[0]
	for _, x := range st.Stored {
		if x < lo {
			lo = x
		} else if x > hi {
			hi = x
		} else {
			continue
		}
		if l, h := hu(lo, hi); l != h && (st.Modality != "CT" || h > -900) {
			return ""
		}
	}
	return emptyWhy(hu(lo, hi))
}

// emptyWhy says why a study whose values span [lo, hi] is empty.
func emptyWhy(lo, hi float32) string {
	if lo == hi {
		return fmt.Sprintf("every voxel of the study is %g", lo)
	}
	return fmt.Sprintf("the study is all air (at most %g HU)", hi)
}

// Negative turns r into the answer for an empty study: every finding
// absent with probability 0, masks cleared, measurements 0, and a warning
// that says why. The model's output on such a study means nothing.
func (r *Result) Negative(why string) {
	for i := range r.Findings {
		r.Findings[i].Probability, r.Findings[i].Present = 0, false
	}
	for i := range r.Masks {
		clear(r.Masks[i].Voxels)
	}
	for i := range r.Measurements {
		r.Measurements[i].Value = 0
	}
	r.Warnings = append(r.Warnings, why+": nothing to find; findings are reported negative")
}
