package bundle

import (
	"fmt"

	"github.com/voxserve/voxserve/preprocess"
)

// Preprocessing declares how a study becomes the model's input. Without it,
// a volume feeds the model's single input as it is.
type Preprocessing struct {
	// Orientation: LPS reorients to the nearest LPS-aligned axes; empty keeps.
	Orientation string `yaml:"orientation"`
	// TargetSpacing in mm, x y z; 0 keeps an axis.
	TargetSpacing []float64 `yaml:"target_spacing"`
	// InPlaneSize [rows, columns] centre-crops or pads each slice.
	InPlaneSize []int `yaml:"in_plane_size"`
	// Windows (Hounsfield units) make one channel each.
	Windows []WindowSpec `yaml:"windows"`
	// Normalize applies without windows: none, zscore, or clip with Clip.
	Normalize string `yaml:"normalize"`
	// Clip is [a_min, a_max, b_min, b_max].
	Clip []float64 `yaml:"clip"`
	// Layout: volume, slices, slabs or patches.
	Layout string `yaml:"layout"`
	// SlabSlices (odd) for slabs.
	SlabSlices int `yaml:"slab_slices"`
	// PatchSize [x, y, z] and Overlap for patches.
	PatchSize []int   `yaml:"patch_size"`
	Overlap   float64 `yaml:"overlap"`
	PadValue  float64 `yaml:"pad_value"`
}

// WindowSpec is one window/level channel.
type WindowSpec struct {
	Name   string  `yaml:"name"`
	Center float64 `yaml:"center"`
	Width  float64 `yaml:"width"`
}

var layouts = []string{preprocess.LayoutVolume, preprocess.LayoutSlices, preprocess.LayoutSlabs, preprocess.LayoutPatches}

func (p *Preprocessing) validate(s *Spec, bad func(field, format string, args ...any)) {
	if p.Layout == "" {
		p.Layout = preprocess.LayoutVolume
	}
	if p.Normalize == "" {
		p.Normalize = "none"
	}
	if p.Orientation != "" && p.Orientation != "LPS" {
		bad("preprocessing.orientation", "%q must be LPS or empty", p.Orientation)
	}
	if n := len(p.TargetSpacing); n != 0 && n != 3 {
		bad("preprocessing.target_spacing", "%d values, want 3 (x, y, z in mm)", n)
	}
	for i, v := range p.TargetSpacing {
		if v < 0 || v > 100 {
			bad(fmt.Sprintf("preprocessing.target_spacing[%d]", i), "%g must be between 0 (keep) and 100 mm", v)
		}
	}
	if n := len(p.InPlaneSize); n != 0 && (n != 2 || p.InPlaneSize[0] < 1 || p.InPlaneSize[1] < 1 || p.InPlaneSize[0] > 4096 || p.InPlaneSize[1] > 4096) {
		bad("preprocessing.in_plane_size", "%v must be [rows, columns], each 1..4096", p.InPlaneSize)
	}
	for i, w := range p.Windows {
		if !(w.Width > 0) {
			bad(fmt.Sprintf("preprocessing.windows[%d].width", i), "%g must be > 0", w.Width)
		}
	}
	switch p.Normalize {
	case "none", "zscore":
	case "clip":
		if len(p.Clip) != 4 || !(p.Clip[1] > p.Clip[0]) {
			bad("preprocessing.clip", "%v must be [a_min, a_max, b_min, b_max] with a_max > a_min", p.Clip)
		}
	default:
		bad("preprocessing.normalize", "%q must be none, zscore or clip", p.Normalize)
	}
	if len(p.Windows) > 0 && p.Normalize != "none" {
		bad("preprocessing.normalize", "windows already scale to [0, 1]; use one or the other")
	}
	if !oneOf(p.Layout, layouts) {
		bad("preprocessing.layout", "%q must be one of volume, slices, slabs, patches", p.Layout)
	}
	if p.Layout == preprocess.LayoutSlabs && (p.SlabSlices < 1 || p.SlabSlices%2 == 0) {
		bad("preprocessing.slab_slices", "%d must be an odd number >= 1", p.SlabSlices)
	}
	if p.Layout == preprocess.LayoutPatches {
		if len(p.PatchSize) != 3 {
			bad("preprocessing.patch_size", "%v must be [x, y, z]", p.PatchSize)
		}
		for i, v := range p.PatchSize {
			if v < 1 || v > 1024 {
				bad(fmt.Sprintf("preprocessing.patch_size[%d]", i), "%d must be 1..1024", v)
			}
		}
		if p.Overlap < 0 || p.Overlap >= 1 {
			bad("preprocessing.overlap", "%g must be in [0, 1)", p.Overlap)
		}
	}
	if len(s.Inputs) != 1 {
		bad("preprocessing", "needs a model with exactly one input, not %d", len(s.Inputs))
		return
	}
	if dt := s.Inputs[0].DataType; dt != "float32" && dt != "float16" {
		bad("inputs[0].data_type", "%q: preprocessing writes float32 or float16", dt)
	}
	// The declared input must fit the layout: [C, ...] after the batch axis.
	dims := s.Inputs[0].Dims
	spec := p.Spec()
	want := map[string]int{preprocess.LayoutVolume: 4, preprocess.LayoutSlices: 3, preprocess.LayoutSlabs: 3, preprocess.LayoutPatches: 4}[p.Layout]
	if s.MaxBatchSize == 0 {
		bad("max_batch_size", "must be > 0 when preprocessing is declared (the layouts batch slices or patches)")
	}
	if want != 0 && len(dims) != want {
		bad("inputs[0].dims", "%v: layout %s takes %d axes after the batch axis", dims, p.Layout, want)
		return
	}
	if want != 0 && dims[0] != -1 && int(dims[0]) != spec.InputChannels() {
		bad("inputs[0].dims[0]", "%d channels, but the preprocessing makes %d", dims[0], spec.InputChannels())
	}
	if p.Layout == preprocess.LayoutPatches && len(p.PatchSize) == 3 {
		for a, d := range []int64{dims[1], dims[2], dims[3]} { // z, y, x
			if d != -1 && int(d) != p.PatchSize[2-a] {
				bad(fmt.Sprintf("inputs[0].dims[%d]", a+1), "%d does not match patch_size %v (x, y, z)", d, p.PatchSize)
			}
		}
	}
	if (p.Layout == preprocess.LayoutSlices || p.Layout == preprocess.LayoutSlabs) && len(p.InPlaneSize) == 2 {
		if (dims[1] != -1 && int(dims[1]) != p.InPlaneSize[0]) || (dims[2] != -1 && int(dims[2]) != p.InPlaneSize[1]) {
			bad("inputs[0].dims", "%v does not match in_plane_size %v", dims, p.InPlaneSize)
		}
	}
}

// PreprocessSpec is the model's preprocessing in the pipeline's form:
// Preprocessing.Spec, written in the element type the model's input
// takes (float16 or float32).
func (s *Spec) PreprocessSpec() preprocess.Spec {
	ps := s.Preprocessing.Spec()
	ps.Half = len(s.Inputs) == 1 && s.Inputs[0].DataType == "float16"
	return ps
}

// Spec converts the declaration to the preprocessing pipeline's form, for
// a float32 input (Spec.PreprocessSpec sets the input's type).
func (p *Preprocessing) Spec() preprocess.Spec {
	s := preprocess.Spec{Orientation: p.Orientation, Normalize: p.Normalize, Layout: p.Layout,
		SlabRadius: max(p.SlabSlices-1, 0) / 2, Overlap: p.Overlap, PadValue: float32(p.PadValue)}
	copy(s.TargetSpacing[:], p.TargetSpacing)
	copy(s.InPlaneSize[:], p.InPlaneSize)
	copy(s.Clip[:], p.Clip)
	copy(s.PatchSize[:], p.PatchSize)
	for _, w := range p.Windows {
		s.Windows = append(s.Windows, preprocess.Window{Name: w.Name, Center: w.Center, Width: w.Width})
	}
	return s
}
