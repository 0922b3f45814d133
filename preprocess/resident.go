package preprocess

import (
	"fmt"

	"github.com/voxserve/voxserve/internal/par"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

// ResidentChannels is a per-voxel model output left in an accelerator's
// memory (engine.Model.InferAllTo), read as channels on the model grid
// where it lies: channel c's voxel (x, y, z) is float32 number
// c*CStride + z*ZStride + y*NX + x from Bytes.Addr. The strides cover the
// layouts a batch of slices or a volume gives, with no copy to reorder
// them. For sliding-window patches, Bytes are the patches' predictions
// ([P, C, pz, py, px], Patches' order over the grid with Overlap) and the
// strides those of the channels they stitch into, [C, z, y, x].
type ResidentChannels struct {
	Bytes            tensor.DeviceBytes
	C, NX, NY, NZ    int
	CStride, ZStride int
	Patches          []Patch
	PatchSize        [3]int
	Overlap          float64
}

// ResidentChannels describes a model output in an accelerator's memory
// (out.Device) as channels on the model grid, as ModelChannels reads one
// on the host.
func (p *Prepared) ResidentChannels(out *tensor.Tensor) (ResidentChannels, error) {
	if out.Device == nil {
		return ResidentChannels{}, fmt.Errorf("output %q is not in device memory", out.Name)
	}
	if out.DType != tensor.Float32 {
		return ResidentChannels{}, fmt.Errorf("output %q is %s; mask outputs must be float32", out.Name, out.DType)
	}
	return p.strides(out)
}

// strides lays out output out (checked against the model grid) as
// ResidentChannels: [1, C, z, y, x] for a volume, [z, C, y, x] for slices
// and slabs, [P, C, pz, py, px] for patches.
func (p *Prepared) strides(out *tensor.Tensor) (ResidentChannels, error) {
	if err := p.checkOutput(out); err != nil {
		return ResidentChannels{}, err
	}
	mx, my, mz := p.ModelSize[0], p.ModelSize[1], p.ModelSize[2]
	plane := mx * my
	rc := ResidentChannels{C: int(out.Shape[1]), NX: mx, NY: my, NZ: mz}
	if out.Device != nil {
		rc.Bytes = *out.Device
	}
	values := rc.C * mz * plane
	switch p.Spec.Layout {
	case LayoutVolume, "":
		rc.CStride, rc.ZStride = mz*plane, plane
	case LayoutSlices, LayoutSlabs:
		rc.CStride, rc.ZStride = plane, rc.C*plane
	case LayoutPatches:
		rc.CStride, rc.ZStride = mz*plane, plane
		rc.Patches, rc.PatchSize, rc.Overlap = p.Patches, p.Spec.PatchSize, p.Spec.Overlap
		ps := rc.PatchSize
		values = len(rc.Patches) * rc.C * ps[0] * ps[1] * ps[2]
	default:
		return ResidentChannels{}, fmt.Errorf("output %q: unknown layout %q", out.Name, p.Spec.Layout)
	}
	if want := out.DType.Size() * values; out.ByteLen() != want {
		return ResidentChannels{}, fmt.Errorf("output %q has %d bytes; its shape %v needs %d", out.Name, out.ByteLen(), out.Shape, want)
	}
	return rc, nil
}

// checkOutput checks a per-voxel output's shape against the model grid,
// for the volume, slices and slabs layouts.
func (p *Prepared) checkOutput(out *tensor.Tensor) error {
	mx, my, mz := int64(p.ModelSize[0]), int64(p.ModelSize[1]), int64(p.ModelSize[2])
	switch p.Spec.Layout {
	case LayoutVolume, "":
		if len(out.Shape) != 5 || out.Shape[0] != 1 || out.Shape[2] != mz || out.Shape[3] != my || out.Shape[4] != mx {
			return fmt.Errorf("output %q has shape %v; want [1, C, %d, %d, %d]", out.Name, out.Shape, mz, my, mx)
		}
	case LayoutSlices, LayoutSlabs:
		if len(out.Shape) != 4 || out.Shape[0] != mz || out.Shape[2] != my || out.Shape[3] != mx {
			return fmt.Errorf("output %q has shape %v; want [%d, C, %d, %d]", out.Name, out.Shape, mz, my, mx)
		}
	case LayoutPatches:
		ps := p.Spec.PatchSize
		if len(out.Shape) != 5 || out.Shape[0] != int64(len(p.Patches)) || out.Shape[2] != int64(ps[2]) || out.Shape[3] != int64(ps[1]) || out.Shape[4] != int64(ps[0]) {
			return fmt.Errorf("output %q has shape %v; want [%d, C, %d, %d, %d]", out.Name, out.Shape, len(p.Patches), ps[2], ps[1], ps[0])
		}
	}
	if len(out.Shape) > 1 && out.Shape[1] < 1 {
		return fmt.Errorf("output %q has shape %v: no channels", out.Name, out.Shape)
	}
	return nil
}

// Gather is the CPU reference of reading ResidentChannels: v, the
// output's values wherever they were, copied out channel-major
// ([C, z, y, x]) as Channels, patches stitched.
func (rc ResidentChannels) Gather(v []float32) (*Channels, error) {
	if len(rc.Patches) > 0 {
		return rc.stitch(v)
	}
	plane := rc.NX * rc.NY
	vox := plane * rc.NZ
	ch := &Channels{C: rc.C, NX: rc.NX, NY: rc.NY, NZ: rc.NZ, V: make([]float32, rc.C*vox)}
	par.Range(rc.NZ, func(lo, hi int) {
		for k := lo; k < hi; k++ {
			for c := 0; c < rc.C; c++ {
				at := c*rc.CStride + k*rc.ZStride
				copy(ch.V[c*vox+k*plane:c*vox+(k+1)*plane], v[at:at+plane])
			}
		}
	})
	return ch, nil
}

// stitch aggregates patch predictions v ([P, C, pz, py, px]) into
// channels with Gaussian weights (Aggregator).
func (rc ResidentChannels) stitch(v []float32) (*Channels, error) {
	ps := rc.PatchSize
	agg := NewAggregator(rc.C, [3]int{rc.NX, rc.NY, rc.NZ}, ps)
	per := rc.C * ps[0] * ps[1] * ps[2]
	if len(v) != len(rc.Patches)*per {
		return nil, fmt.Errorf("%d predicted values for %d patches of %d", len(v), len(rc.Patches), per)
	}
	for i, patch := range rc.Patches {
		if err := agg.Add(patch, v[i*per:(i+1)*per]); err != nil {
			return nil, err
		}
	}
	return agg.Result(), nil
}

// ResidentLabelAccelerator is a LabelAccelerator that also labels model
// outputs left in its memory (kernels.GPU): the model's mask output goes
// from the model to the label map without passing through the host. The
// caller lends the model the memory (ResidentBuffer) for its outputs
// (engine.Model.InferAllTo), with the memory the model's outputs are
// bound in matching ResidentMemory.
type ResidentLabelAccelerator interface {
	LabelAccelerator
	ResidentMemory() (kind string, device int)
	// ResidentBuffer lends n bytes of that memory, and the function that
	// gives them back.
	ResidentBuffer(n int) (Resident, error)
	// ReadResident copies resident bytes to the host: the fallback when
	// labelling them where they are fails.
	ReadResident(dst []byte, src tensor.DeviceBytes) error
	// SourceLabelsResident is SourceLabels over channels in its memory.
	SourceLabelsResident(ch ResidentChannels, model, source volume.Geometry, size [3]int, activation string, thresholds []float64, minVoxels int) ([]uint8, error)
}
