package server

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/preprocess"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/tensor"
	"github.com/voxserve/voxserve/volume"
)

var toDType = map[pb.DataType]tensor.DType{
	pb.DataType_DATA_TYPE_FLOAT32: tensor.Float32,
	pb.DataType_DATA_TYPE_FLOAT16: tensor.Float16,
	pb.DataType_DATA_TYPE_FLOAT64: tensor.Float64,
	pb.DataType_DATA_TYPE_INT8:    tensor.Int8,
	pb.DataType_DATA_TYPE_UINT8:   tensor.Uint8,
	pb.DataType_DATA_TYPE_INT16:   tensor.Int16,
	pb.DataType_DATA_TYPE_UINT16:  tensor.Uint16,
	pb.DataType_DATA_TYPE_INT32:   tensor.Int32,
	pb.DataType_DATA_TYPE_INT64:   tensor.Int64,
	pb.DataType_DATA_TYPE_BOOL:    tensor.Bool,
}

// DTypeFromProto maps the API's data type enum to a tensor type.
func DTypeFromProto(d pb.DataType) (tensor.DType, bool) {
	t, ok := toDType[d]
	return t, ok
}

// DTypeToProto maps a tensor type to the API's enum.
func DTypeToProto(d tensor.DType) pb.DataType {
	for k, v := range toDType {
		if v == d {
			return k
		}
	}
	return pb.DataType_DATA_TYPE_UNSPECIFIED
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func tensorsFromProto(in []*pb.Tensor) ([]*tensor.Tensor, error) {
	if len(in) == 0 {
		return nil, invalid("tensors: at least one tensor is required")
	}
	out := make([]*tensor.Tensor, len(in))
	for i, t := range in {
		dt, ok := toDType[t.GetDataType()]
		if !ok {
			return nil, invalid("tensors[%d].data_type: %v is not a supported data type", i, t.GetDataType())
		}
		out[i] = &tensor.Tensor{Name: t.GetName(), DType: dt, Shape: t.GetShape(), Data: t.GetData()}
	}
	return out, nil
}

func tensorToProto(t *tensor.Tensor) *pb.Tensor {
	return &pb.Tensor{Name: t.Name, DataType: DTypeToProto(t.DType), Shape: t.Shape, Data: t.Data}
}

func geometryFromProto(g *pb.Geometry) (volume.Geometry, error) {
	geo := volume.Identity()
	if g == nil {
		return geo, nil
	}
	if n := len(g.GetSpacing()); n != 0 {
		if n != 3 {
			return geo, invalid("volume.geometry.spacing: %d values, want 3 (x, y, z)", n)
		}
		copy(geo.Spacing[:], g.GetSpacing())
	}
	if n := len(g.GetOrigin()); n != 0 {
		if n != 3 {
			return geo, invalid("volume.geometry.origin: %d values, want 3 (x, y, z)", n)
		}
		copy(geo.Origin[:], g.GetOrigin())
	}
	if n := len(g.GetDirection()); n != 0 {
		if n != 9 {
			return geo, invalid("volume.geometry.direction: %d values, want 9 (a row-major 3x3 matrix)", n)
		}
		copy(geo.Direction[:], g.GetDirection())
	}
	return geo, nil
}

func geometryToProto(g volume.Geometry) *pb.Geometry {
	return &pb.Geometry{Spacing: g.Spacing[:], Origin: g.Origin[:], Direction: g.Direction[:]}
}

func volumeFromProto(v *pb.Volume) (*volume.Volume, error) {
	dt, ok := toDType[v.GetDataType()]
	if !ok {
		return nil, invalid("volume.data_type: %v is not a supported data type", v.GetDataType())
	}
	dims := v.GetDims()
	var d3 [3]int64
	switch len(dims) {
	case 2:
		d3 = [3]int64{1, dims[0], dims[1]}
	case 3:
		copy(d3[:], dims)
	default:
		return nil, invalid("volume.dims: %d values, want [slices, rows, columns] or [rows, columns]", len(dims))
	}
	geo, err := geometryFromProto(v.GetGeometry())
	if err != nil {
		return nil, err
	}
	vol := &volume.Volume{
		Dims:     d3,
		Geometry: geo,
		Voxels:   tensor.Tensor{Name: "volume", DType: dt, Data: v.GetData()},
		Modality: strings.ToUpper(strings.TrimSpace(v.GetModality())),
		BodyPart: strings.ToUpper(strings.TrimSpace(v.GetBodyPart())),
	}
	if len(v.GetData()) == 0 {
		return nil, invalid("volume.data: empty")
	}
	if err := vol.Validate(); err != nil {
		return nil, invalid("volume: %v", err)
	}
	return vol, nil
}

// checkAccepts refuses a study whose modality or body part the bundle does
// not accept. Missing metadata is accepted: raw volumes often carry none.
func checkAccepts(spec *bundle.Spec, modality, bodyPart string) error {
	if modality != "" && len(spec.Modalities) > 0 && !containsFold(spec.Modalities, modality) {
		return status.Errorf(codes.FailedPrecondition, "model %q accepts modality %s, the study is %s", spec.Name, strings.Join(spec.Modalities, "/"), modality)
	}
	if bodyPart != "" && len(spec.BodyParts) > 0 && !containsFold(spec.BodyParts, bodyPart) {
		return status.Errorf(codes.FailedPrecondition, "model %q accepts body part %s, the study is %s", spec.Name, strings.Join(spec.BodyParts, "/"), bodyPart)
	}
	return nil
}

func containsFold(set []string, s string) bool {
	for _, x := range set {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// volumeInput feeds a volume to a single-input model as a batch of one:
// [slices, rows, columns] gains leading axes of 1 up to the input's rank, and
// voxels are converted to float32 when the model takes float32. Windowing,
// resampling and normalization, where a bundle declares them, are the
// preprocessing pipeline's job.
func volumeInput(spec *bundle.Spec, vol *volume.Volume) (*tensor.Tensor, error) {
	if len(spec.Inputs) != 1 {
		return nil, invalid("volume: model %q has %d inputs; send tensors instead", spec.Name, len(spec.Inputs))
	}
	in := spec.Inputs[0]
	rank := len(in.Dims)
	if spec.MaxBatchSize > 0 {
		rank++
	}
	spatial := vol.Dims[:]
	if vol.Dims[0] == 1 && rank < 5 {
		spatial = vol.Dims[1:] // a single 2D image
	}
	if rank < len(spatial) {
		return nil, invalid("volume: model %q input %q has %d axes, too few for a volume of dims %v", spec.Name, in.Name, rank, vol.Dims)
	}
	shape := make([]int64, 0, rank)
	for len(shape)+len(spatial) < rank {
		shape = append(shape, 1)
	}
	shape = append(shape, spatial...)
	t := &tensor.Tensor{Name: in.Name, DType: vol.Voxels.DType, Shape: shape, Data: vol.Voxels.Data}
	if string(t.DType) != in.DataType || vol.Rescale != nil {
		if in.DataType != string(tensor.Float32) {
			return nil, invalid("volume.data_type: model %q takes %s, the volume is %s", spec.Name, in.DataType, t.DType)
		}
		f, err := vol.Float32()
		if err != nil {
			return nil, invalid("volume: %v", err)
		}
		t = tensor.FromFloat32(in.Name, shape, f)
	}
	return t, nil
}

func modelInfo(m *engine.Model, available []int64, acc preprocess.Accelerator) *pb.ModelInfo {
	s := m.Spec
	device := "cpu"
	if pp := s.Preprocessing; acc != nil && pp != nil {
		if spec := pp.Spec(); spec.Accelerates() {
			device = acc.Name()
		}
	}
	info := &pb.ModelInfo{PreprocessingDevice: device,
		Name: s.Name, Version: m.VersionString(), State: pb.ModelInfo_STATE_READY,
		Task: s.Task, Description: s.Description, Modalities: s.Modalities, BodyParts: s.BodyParts,
		MaxBatchSize: s.MaxBatchSize, ExecutionProvider: m.Provider(), IoBinding: m.IOBinding(),
		IntendedUse: s.Provenance.IntendedUse, Metrics: s.Provenance.Metrics,
	}
	for _, in := range s.Inputs {
		dt, _ := tensor.ParseDType(in.DataType)
		info.Inputs = append(info.Inputs, &pb.TensorInfo{Name: in.Name, DataType: DTypeToProto(dt), Dims: batchDims(s, in.Dims)})
	}
	for _, out := range s.Outputs {
		dt, _ := tensor.ParseDType(out.DataType)
		ti := &pb.TensorInfo{Name: out.Name, DataType: DTypeToProto(dt), Dims: batchDims(s, out.Dims), Kind: out.Kind}
		for _, l := range out.Labels {
			ti.Labels = append(ti.Labels, l.Name)
		}
		info.Outputs = append(info.Outputs, ti)
	}
	for _, v := range available {
		info.AvailableVersions = append(info.AvailableVersions, fmt.Sprint(v))
	}
	return info
}

// batchDims are a declared tensor's dims as clients see them: with the
// batch axis (-1) first when the model batches, as Triton shows them.
func batchDims(s *bundle.Spec, dims []int64) []int64 {
	if s.MaxBatchSize > 0 {
		return append([]int64{-1}, dims...)
	}
	return dims
}
