package preprocess

import (
	"fmt"
	"math"

	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// Layouts: how a prepared volume is cut into the model's batch.
const (
	LayoutVolume  = "volume"  // [1, C, Z, Y, X]
	LayoutSlices  = "slices"  // [Z, C, Y, X]
	LayoutSlabs   = "slabs"   // [Z, C*(2r+1), Y, X]
	LayoutPatches = "patches" // [N, C, pz, py, px]
)

// Spec is a bundle's declared preprocessing.
type Spec struct {
	// Orientation "LPS" reorients to the nearest LPS-aligned axes; "" keeps.
	Orientation string
	// TargetSpacing in mm along x, y, z; 0 keeps that axis' spacing.
	TargetSpacing [3]float64
	// InPlaneSize (rows, columns) centre-crops or pads each slice after
	// resampling; 0 keeps.
	InPlaneSize [2]int
	// Windows make one channel each, in [0, 1]. Without windows the volume
	// is one channel, normalized per Normalize.
	Windows []Window
	// Normalize is "none", "zscore" or "clip" (with Clip = aMin, aMax,
	// bMin, bMax); it applies when there are no windows.
	Normalize string
	Clip      [4]float64
	Layout    string
	// SlabRadius r gives slabs of 2r+1 slices.
	SlabRadius int
	// PatchSize (x, y, z) and Overlap (fraction) for the patches layout.
	PatchSize [3]int
	Overlap   float64
	// PadValue fills voxels outside the volume (after normalization).
	PadValue float32
	// Half writes the model input as float16 (a model that takes float16),
	// rounded to nearest even; float32 otherwise.
	Half bool
}

// Channels is the number of channels per voxel before slab stacking.
func (s *Spec) Channels() int { return max(1, len(s.Windows)) }

// InputChannels is the channel axis of the model input.
func (s *Spec) InputChannels() int {
	if s.Layout == LayoutSlabs {
		return s.Channels() * (2*s.SlabRadius + 1)
	}
	return s.Channels()
}

// Prepared is a volume turned into a model input, with what is needed to
// map the model's outputs back onto the source grid.
type Prepared struct {
	Spec       Spec
	Source     volume.Geometry
	SourceSize [3]int // x, y, z
	Model      volume.Geometry
	ModelSize  [3]int
	Patches    []Patch
	// Input is the model input, float32.
	Input *tensor.Tensor
	// Device is the accelerator that ran the fused pass, "" for the CPU.
	Device string
	// Warnings are what the caller should pass on.
	Warnings []string
	// release gives back a resident input's memory (PrepareResident).
	release func()
}

// Accelerator runs the fused resample + window pass somewhere faster than
// this package's Go code (kernels.GPU, on a CUDA device). It must compute
// what ResampleMapsInto followed by Windows computes.
type Accelerator interface {
	Name() string
	WindowResample(src []float32, dims [3]int, maps [3]AxisMap, ws []Window, out []float32) error
}

// AcceleratorI16 is an Accelerator that also takes int16 stored values
// with their rescale, as DICOM stores them (kernels.GPU: half the bytes to
// upload, rescaled as they are read). It must compute what rescaling to
// float32 and WindowResample compute.
type AcceleratorI16 interface {
	Accelerator
	WindowResampleI16(src []int16, dims [3]int, slope, intercept float32, maps [3]AxisMap, ws []Window, out []float32) error
}

// SlabLayout is how PrepareResident lays the channels out as the model
// input: slabs of radius R (0: 2D slices), cropped or padded in-plane to
// Rows x Cols, output (i, j) reading channel voxel (i+OffX, j+OffY) and
// Pad outside (CropOrPad's offsets: negative ones pad before); float16
// values (tensor.Float32ToHalf) when Half, float32 otherwise.
type SlabLayout struct {
	R, Rows, Cols, OffX, OffY int
	Pad                       float32
	Half                      bool
}

// Resident is a model input an accelerator left in its memory, and
// Release to give it back once the model has read it.
type Resident struct {
	tensor.DeviceBytes
	Release func()
}

// ResidentAccelerator is an accelerator that can leave the model input in
// device memory, for a model whose inputs are bound there
// (engine.Model.IOMemory): preprocessing, batching and the model then
// never pass through the host.
type ResidentAccelerator interface {
	AcceleratorI16
	// ResidentMemory names where PrepareSlabs leaves its output, as
	// engine.Model.IOMemory names a model's bound memory.
	ResidentMemory() (kind string, device int)
	// PrepareSlabs runs the fused pass (int16 stored values with their
	// rescale, or float32 values when src16 is nil) and lays the channels
	// out as lay says, [nz, C*(2R+1), Rows, Cols], float32 or float16.
	PrepareSlabs(src16 []int16, src32 []float32, dims [3]int, slope, intercept float32, maps [3]AxisMap, ws []Window, lay SlabLayout) (Resident, error)
	// PreparePatches is PrepareSlabs for sliding-window patches,
	// [P, C, pz, py, px] as PatchesTensor lays them out.
	PreparePatches(src16 []int16, src32 []float32, dims [3]int, slope, intercept float32, maps [3]AxisMap, ws []Window, lay PatchLayout) (Resident, error)
}

// HostMemory is implemented by accelerators whose uploads are fastest from
// memory they lend (kernels.GPU: page-locked buffers, recycled): the
// server decodes studies straight into it.
type HostMemory interface {
	HostFloat32s(n int) ([]float32, func())
	HostInt16s(n int) ([]int16, func())
}

// Accelerates says whether PrepareWith hands spec's work to an accelerator:
// when it declares windows (the fused pass covers resampling and windows).
func (s *Spec) Accelerates() bool { return len(s.Windows) > 0 }

// Prepare runs the declared preprocessing on a volume.
func Prepare(v *volume.Volume, spec Spec, inputName string) (*Prepared, error) {
	return PrepareWith(v, spec, inputName, nil)
}

// PrepareWith is Prepare with the resample + window pass on acc (nil: the
// CPU). If acc fails, the pass runs on the CPU and Warnings says so.
func PrepareWith(v *volume.Volume, spec Spec, inputName string, acc Accelerator) (*Prepared, error) {
	// A volume of int16 stored values (a DICOM series kept so) is not
	// converted whole: an accelerator that reads int16 takes it as it is,
	// and the CPU's resampling converts only the rows it reads. Reorienting
	// and windowing without resampling need every value, as float32.
	var g *Grid
	stored, keep := v.Int16()
	keep = keep && len(spec.Windows) > 0 && !(spec.Orientation == "LPS" && NeedsReorient(v.Geometry))
	slope, icpt := float32(1), float32(0)
	if v.Rescale != nil {
		slope, icpt = v.Rescale.Slope, v.Rescale.Intercept
	}
	if keep {
		g = &Grid{NX: int(v.Dims[2]), NY: int(v.Dims[1]), NZ: int(v.Dims[0]), Geometry: v.Geometry}
	} else {
		var err error
		if g, err = FromVolume(v); err != nil {
			return nil, err
		}
	}
	p := &Prepared{Spec: spec, Source: g.Geometry, SourceSize: [3]int{g.NX, g.NY, g.NZ}}
	if spec.Orientation == "LPS" && !keep {
		var err error
		if g, err = Reorient(g); err != nil {
			return nil, err
		}
	}
	n := [3]int{g.NX, g.NY, g.NZ}
	to, size := targetGrid(g, spec)
	var ch *Channels
	a16, _ := acc.(AcceleratorI16)
	if acc != nil && spec.Accelerates() && (!keep || a16 != nil) {
		// One pass: resampling (identity tables when none is needed:
		// weight 0 reproduces the values exactly) and windows.
		out := &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: g.Geometry}
		out.Geometry.Spacing = to
		c := &Channels{C: len(spec.Windows), NX: size[0], NY: size[1], NZ: size[2]}
		c.V = make([]float32, c.C*out.Len())
		var err error
		if keep {
			err = a16.WindowResampleI16(stored, n, slope, icpt, ResampleMaps(g, out, Linear), spec.Windows, c.V)
		} else {
			err = acc.WindowResample(g.V, n, ResampleMaps(g, out, Linear), spec.Windows, c.V)
		}
		if err != nil {
			p.Warnings = append(p.Warnings, fmt.Sprintf("preprocessing on %s failed (%v); ran on the CPU", acc.Name(), err))
		} else {
			ch, g, p.Device = c, out, acc.Name()
		}
	}
	if ch == nil && (size != n || to != g.Geometry.Spacing) {
		if keep {
			out := &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: g.Geometry}
			out.Geometry.Spacing = to
			out.V = make([]float32, out.Len())
			ResampleMapsIntoI16(stored, g.NX, g.NY, slope, icpt, out, ResampleMaps(g, out, Linear))
			g = out
		} else {
			g = Resample(g, to, size, Linear)
		}
	}
	if g.V == nil { // int16 kept, and no resampling read it: all of it, then
		values, _, err := v.Values()
		if err != nil {
			return nil, err
		}
		g.V = values
	}
	// Normalize before padding so that the pad value is in the model's units.
	switch {
	case ch != nil: // done on the accelerator
	case len(spec.Windows) > 0:
		ch = &Channels{C: len(spec.Windows), NX: g.NX, NY: g.NY, NZ: g.NZ, V: make([]float32, len(spec.Windows)*g.Len())}
		Windows(g, spec.Windows, ch.V)
	default:
		switch spec.Normalize {
		case "zscore":
			ZScore(g.owned())
		case "clip":
			c := spec.Clip
			ClipScale(g.owned(), float32(c[0]), float32(c[1]), float32(c[2]), float32(c[3]))
		}
		ch = &Channels{C: 1, NX: g.NX, NY: g.NY, NZ: g.NZ, V: g.V}
	}
	geo := g.Geometry
	if rows, cols := spec.InPlaneSize[0], spec.InPlaneSize[1]; rows > 0 && cols > 0 && (rows != ch.NY || cols != ch.NX) {
		var out *Channels
		for c := 0; c < ch.C; c++ {
			one := &Grid{NX: ch.NX, NY: ch.NY, NZ: ch.NZ, Geometry: geo, V: ch.V[c*ch.vox() : (c+1)*ch.vox()]}
			cp := CropOrPad(one, rows, cols, spec.PadValue)
			if out == nil {
				out = &Channels{C: ch.C, NX: cp.NX, NY: cp.NY, NZ: cp.NZ, V: make([]float32, ch.C*cp.Len())}
			}
			copy(out.V[c*cp.Len():], cp.V)
			if c == ch.C-1 {
				geo = cp.Geometry
			}
		}
		ch = out
	}
	p.Model, p.ModelSize = geo, [3]int{ch.NX, ch.NY, ch.NZ}

	var data []float32
	var shape []int64
	switch spec.Layout {
	case LayoutVolume, "":
		data = ch.V
		shape = []int64{1, int64(ch.C), int64(ch.NZ), int64(ch.NY), int64(ch.NX)}
	case LayoutSlices:
		data = make([]float32, len(ch.V))
		SlicesTensor(ch, data)
		shape = []int64{int64(ch.NZ), int64(ch.C), int64(ch.NY), int64(ch.NX)}
	case LayoutSlabs:
		depth := 2*spec.SlabRadius + 1
		data = make([]float32, len(ch.V)*depth)
		SlabsTensor(ch, spec.SlabRadius, data)
		shape = []int64{int64(ch.NZ), int64(ch.C * depth), int64(ch.NY), int64(ch.NX)}
	case LayoutPatches:
		ps := spec.PatchSize
		p.Patches = Patches(p.ModelSize, ps, spec.Overlap)
		data = PatchesTensor(ch, PatchLayout{Patches: p.Patches, Size: ps, Pad: spec.PadValue})
		shape = []int64{int64(len(p.Patches)), int64(ch.C), int64(ps[2]), int64(ps[1]), int64(ps[0])}
	default:
		return nil, fmt.Errorf("unknown layout %q", spec.Layout)
	}
	if spec.Half {
		p.Input = tensor.FromFloat32Half(inputName, shape, data)
	} else {
		p.Input = tensor.ViewFloat32(inputName, shape, data) // data belongs to this request
	}
	return p, nil
}

// targetGrid is the spacing and size spec resamples g to.
func targetGrid(g *Grid, spec Spec) (to [3]float64, size [3]int) {
	n := [3]int{g.NX, g.NY, g.NZ}
	to, size = g.Geometry.Spacing, n
	if spec.TargetSpacing != ([3]float64{}) {
		for a := 0; a < 3; a++ {
			if spec.TargetSpacing[a] != 0 {
				to[a] = spec.TargetSpacing[a]
			}
			size[a] = ResampleSize(n[a], g.Geometry.Spacing[a], to[a])
		}
	}
	return to, size
}

// PrepareResident is PrepareWith for an accelerator that leaves the model
// input in its memory, for a model whose inputs are bound there
// (engine.Model.IOMemory): the study goes up once, and the model reads
// its input where the kernels wrote it. It takes windowed studies laid out
// as slices or slabs that need no reorientation; for anything else ok is
// false and the caller runs PrepareWith. The input is the one PrepareWith
// makes, bit for bit; Release gives its memory back once the model ran.
func PrepareResident(v *volume.Volume, spec Spec, inputName string, acc ResidentAccelerator) (p *Prepared, ok bool, err error) {
	if !spec.Accelerates() || (spec.Layout != LayoutSlices && spec.Layout != LayoutSlabs && spec.Layout != LayoutPatches) ||
		(spec.Orientation == "LPS" && NeedsReorient(v.Geometry)) {
		return nil, false, nil
	}
	g := &Grid{NX: int(v.Dims[2]), NY: int(v.Dims[1]), NZ: int(v.Dims[0]), Geometry: v.Geometry}
	n := [3]int{g.NX, g.NY, g.NZ}
	to, size := targetGrid(g, spec)
	out := &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: g.Geometry}
	out.Geometry.Spacing = to
	lay := SlabLayout{Rows: size[1], Cols: size[0], Pad: spec.PadValue}
	model := out.Geometry
	if rows, cols := spec.InPlaneSize[0], spec.InPlaneSize[1]; rows > 0 && cols > 0 && (rows != size[1] || cols != size[0]) {
		if spec.Layout == LayoutPatches {
			return nil, false, nil // patches of a cropped grid: PrepareWith
		}
		lay.Rows, lay.Cols = rows, cols
		lay.OffX, lay.OffY, model = cropGeometry(out.Geometry, size[0], size[1], rows, cols)
	}
	if spec.Layout == LayoutSlabs {
		lay.R = spec.SlabRadius
	}
	lay.Half = spec.Half
	var patches PatchLayout
	if spec.Layout == LayoutPatches {
		patches = PatchLayout{Patches: Patches(size, spec.PatchSize, spec.Overlap), Size: spec.PatchSize, Pad: spec.PadValue, Half: spec.Half}
	}
	// The fused pass, from int16 stored values with their rescale or from
	// float32 values, then the layout.
	src16, i16 := v.Int16()
	var src32 []float32
	slope, icpt := float32(1), float32(0)
	if i16 {
		if v.Rescale != nil {
			slope, icpt = v.Rescale.Slope, v.Rescale.Intercept
		}
	} else {
		src16 = nil
		if src32, _, err = v.Values(); err != nil {
			return nil, false, err
		}
	}
	maps := ResampleMaps(g, out, Linear)
	var res Resident
	if spec.Layout == LayoutPatches {
		res, err = acc.PreparePatches(src16, src32, n, slope, icpt, maps, spec.Windows, patches)
	} else {
		res, err = acc.PrepareSlabs(src16, src32, n, slope, icpt, maps, spec.Windows, lay)
	}
	if err != nil {
		return nil, false, err
	}
	p = &Prepared{Spec: spec, Source: v.Geometry, SourceSize: n, Model: model, ModelSize: [3]int{lay.Cols, lay.Rows, size[2]},
		Device: acc.Name(), release: res.Release, Patches: patches.Patches}
	dt := tensor.Float32
	if spec.Half {
		dt = tensor.Float16
	}
	p.Input = &tensor.Tensor{Name: inputName, DType: dt, Device: &res.DeviceBytes}
	if spec.Layout == LayoutPatches {
		ps := spec.PatchSize
		p.Input.Shape = []int64{int64(len(patches.Patches)), int64(len(spec.Windows)), int64(ps[2]), int64(ps[1]), int64(ps[0])}
	} else {
		depth := 2*lay.R + 1
		p.Input.Shape = []int64{int64(size[2]), int64(len(spec.Windows) * depth), int64(lay.Rows), int64(lay.Cols)}
	}
	return p, true, nil
}

// Release gives back the memory of a resident input (PrepareResident),
// once the model has read it; it does nothing otherwise, or twice.
func (p *Prepared) Release() {
	if p != nil && p.release != nil {
		p.release()
		p.release = nil
	}
}

// ModelChannels reads a per-voxel model output (in the layout's batch form)
// as channels on the model grid ([C, z, y, x]), stitching patches.
func (p *Prepared) ModelChannels(out *tensor.Tensor) (*Channels, error) {
	v, _, err := tensor.Float32View(out) // read only
	if err != nil {
		return nil, err
	}
	if p.Spec.Layout == LayoutVolume || p.Spec.Layout == "" {
		// Already channel-major: read in place.
		if err := p.checkOutput(out); err != nil {
			return nil, err
		}
		mx, my, mz := p.ModelSize[0], p.ModelSize[1], p.ModelSize[2]
		return &Channels{C: int(out.Shape[1]), NX: mx, NY: my, NZ: mz, V: v}, nil
	}
	rc, err := p.strides(out)
	if err != nil {
		return nil, err
	}
	return rc.Gather(v)
}

// ToSource maps a per-voxel model output (probabilities or logits, one
// channel per label, in the layout's batch form) back onto the source grid
// by trilinear interpolation in physical space. It returns [1, C, Z, Y, X]
// on the source grid.
func (p *Prepared) ToSource(out *tensor.Tensor) (*tensor.Tensor, error) {
	ch, err := p.ModelChannels(out)
	if err != nil {
		return nil, err
	}
	res := mapChannels(ch, p.Model, p.Source, p.SourceSize)
	sx, sy, sz := p.SourceSize[0], p.SourceSize[1], p.SourceSize[2]
	return tensor.ViewFloat32(out.Name, []int64{1, int64(ch.C), int64(sz), int64(sy), int64(sx)}, res), nil
}

// PrepareLabels carries a label map on the source grid through the same
// geometry as Prepare (reorientation, nearest-neighbour resampling, crop or
// pad) and lays it out like the model's batch without the channel axis:
// [1, Z, Y, X] (volume), [Z, Y, X] (slices and slabs), [N, pz, py, px]
// (patches). Training data made this way matches what the server feeds the
// model exactly.
func (p *Prepared) PrepareLabels(labels []uint8) (*tensor.Tensor, error) {
	sx, sy, sz := p.SourceSize[0], p.SourceSize[1], p.SourceSize[2]
	if len(labels) != sx*sy*sz {
		return nil, fmt.Errorf("label map has %d voxels, the source has %d", len(labels), sx*sy*sz)
	}
	src := &Grid{NX: sx, NY: sy, NZ: sz, Geometry: p.Source, V: make([]float32, len(labels))}
	for i, l := range labels {
		src.V[i] = float32(l)
	}
	g := ToGrid(src, p.Model, p.ModelSize, Nearest)
	out := make([]byte, len(g.V))
	for i, v := range g.V {
		out[i] = uint8(v)
	}
	mx, my, mz := p.ModelSize[0], p.ModelSize[1], p.ModelSize[2]
	switch p.Spec.Layout {
	case LayoutVolume, "":
		return &tensor.Tensor{Name: "labels", DType: tensor.Uint8, Shape: []int64{1, int64(mz), int64(my), int64(mx)}, Data: out}, nil
	case LayoutSlices, LayoutSlabs:
		return &tensor.Tensor{Name: "labels", DType: tensor.Uint8, Shape: []int64{int64(mz), int64(my), int64(mx)}, Data: out}, nil
	case LayoutPatches:
		ps := p.Spec.PatchSize
		per := ps[0] * ps[1] * ps[2]
		ch := &Channels{C: 1, NX: mx, NY: my, NZ: mz, V: g.V}
		buf := make([]float32, per)
		res := make([]byte, len(p.Patches)*per)
		for i, patch := range p.Patches {
			ExtractPatch(ch, patch, ps, 0, buf)
			for j, v := range buf {
				res[i*per+j] = uint8(v)
			}
		}
		return &tensor.Tensor{Name: "labels", DType: tensor.Uint8, Shape: []int64{int64(len(p.Patches)), int64(ps[2]), int64(ps[1]), int64(ps[0])}, Data: res}, nil
	}
	return nil, fmt.Errorf("unknown layout %q", p.Spec.Layout)
}

// LabelAccelerator maps mask channels from the model grid back onto the
// source grid and labels them there in one place (kernels.GPU), with the
// results SourceLabels gives on the CPU.
type LabelAccelerator interface {
	Name() string
	SourceLabels(ch *Channels, model, source volume.Geometry, size [3]int, activation string, thresholds []float64, minVoxels int) ([]uint8, error)
}

// SourceLabels is the CPU reference of LabelAccelerator: every channel
// mapped trilinearly onto the source grid (size x, y, z), then labelled by
// label (activation, most probable channel, thresholds) and cleared of
// 26-connected components smaller than minVoxels by cleanup. It is
// ToSource followed by postprocess's label map and speck removal, which
// preprocess cannot import: label and cleanup are passed in.
func SourceLabels(ch *Channels, model, source volume.Geometry, size [3]int,
	label func(v []float32, channels, n int, out []uint8), cleanup func(lab []uint8)) []uint8 {
	n := size[0] * size[1] * size[2]
	res := mapChannels(ch, model, source, size)
	lab := make([]uint8, n)
	label(res, ch.C, n, lab)
	cleanup(lab)
	return lab
}

// mapChannels maps every channel trilinearly from the model grid onto the
// source grid (size x, y, z), channel-major.
func mapChannels(ch *Channels, model, source volume.Geometry, size [3]int) []float32 {
	n := size[0] * size[1] * size[2]
	res := make([]float32, ch.C*n)
	for c := 0; c < ch.C; c++ {
		g := &Grid{NX: ch.NX, NY: ch.NY, NZ: ch.NZ, Geometry: model, V: ch.V[c*ch.vox() : (c+1)*ch.vox()]}
		ToGridInto(g, &Grid{NX: size[0], NY: size[1], NZ: size[2], Geometry: source, V: res[c*n : (c+1)*n]}, Linear)
	}
	return res
}

// SourceLabelsBelow is SourceLabels for channels whose voxels label 0
// wherever every channel's mapped value is below its below[c] (the
// thresholds, as logits for sigmoids). Masks are mostly background: a
// source row whose model rows all stay under below, channel by channel, is
// labelled 0 without interpolating it, since a trilinear value cannot
// exceed the largest of its corners. A slack far wider than float32
// rounding keeps the skipped rows exactly those the full path labels 0;
// the other rows are mapped and labelled as SourceLabels does, so the
// labels are identical. Other maps (oblique) take SourceLabels.
func SourceLabelsBelow(ch *Channels, model, source volume.Geometry, size [3]int, below []float32,
	label func(v []float32, channels, n int, out []uint8), cleanup func(lab []uint8)) []uint8 {
	n3 := [3]int{ch.NX, ch.NY, ch.NZ}
	off, m := GridMap(model, source)
	t, ok := separableMap(off, m, size, n3, Linear)
	if len(below) != ch.C || !ok || !separableToGrid {
		return SourceLabels(ch, model, source, size, label, cleanup)
	}
	rows := ch.NY * ch.NZ
	grids := make([]*Grid, ch.C)
	rowMax := make([]float32, ch.C*rows) // channel-major
	limit := make([]float32, ch.C)
	for c := range grids {
		grids[c] = &Grid{NX: ch.NX, NY: ch.NY, NZ: ch.NZ, Geometry: model, V: ch.V[c*ch.vox() : (c+1)*ch.vox()]}
		absMax := float32(0)
		for r := 0; r < rows; r++ {
			mx := float32(math.Inf(-1))
			for _, v := range grids[c].V[r*ch.NX : (r+1)*ch.NX] {
				mx = max(mx, v) // NaN propagates: a row with a NaN is never skipped
				if a := float32(math.Abs(float64(v))); a > absMax {
					absMax = a // NaN compares false and is left out
				}
			}
			rowMax[c*rows+r] = mx
		}
		limit[c] = below[c] - 1e-4*(1+float32(math.Abs(float64(below[c])))+absMax)
	}
	lab := make([]uint8, size[0]*size[1]*size[2])
	tx, ty, tz := t[0], t[1], t[2]
	// Rows are independent: split them (not just the slices, so that a
	// single radiograph uses every core too).
	par.Range(size[1]*size[2], func(lo, hi int) {
		vals := make([]float32, ch.C*size[0])
		for r := lo; r < hi; r++ {
			k, j := r/size[1], r%size[1]
			z0, z1, wz := int(tz.I0[k]), int(tz.I1[k]), tz.W[k]
			y0, y1, wy := int(ty.I0[j]), int(ty.I1[j]), ty.W[j]
			background := true
			for c := 0; c < ch.C && background; c++ {
				rm := rowMax[c*rows:]
				top := max(rm[z0*ch.NY+y0], rm[z0*ch.NY+y1], rm[z1*ch.NY+y0], rm[z1*ch.NY+y1])
				background = top < limit[c]
			}
			if background {
				continue // every voxel of the row is 0
			}
			for c, g := range grids {
				trilinearRow(vals[c*size[0]:(c+1)*size[0]], g, z0, z1, y0, y1, tx.AxisMap, tx.inside, wy, wz)
			}
			at := r * size[0]
			label(vals, ch.C, size[0], lab[at:at+size[0]])
		}
	})
	cleanup(lab)
	return lab
}
