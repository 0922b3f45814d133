package engine

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/tensor"
)

// session wraps one ONNX Runtime session. ORT sessions are safe for
// concurrent Run calls, so one session serves all of a version's instances.
type session struct {
	s        *ort.DynamicAdvancedSession
	inputs   []string
	outputs  []string
	provider string
	// prealloc[i], for an output onnxruntime_go cannot read back when
	// ONNX Runtime allocates it (float16: v1.27 copies one byte per
	// element of it), is its declared dims: run allocates it first.
	prealloc [][]int64
	batched  bool
}

var ortTypes = map[tensor.DType]ort.TensorElementDataType{
	tensor.Float32: ort.TensorElementDataTypeFloat,
	tensor.Float16: ort.TensorElementDataTypeFloat16,
	tensor.Float64: ort.TensorElementDataTypeDouble,
	tensor.Int8:    ort.TensorElementDataTypeInt8,
	tensor.Uint8:   ort.TensorElementDataTypeUint8,
	tensor.Int16:   ort.TensorElementDataTypeInt16,
	tensor.Uint16:  ort.TensorElementDataTypeUint16,
	tensor.Int32:   ort.TensorElementDataTypeInt32,
	tensor.Int64:   ort.TensorElementDataTypeInt64,
	tensor.Bool:    ort.TensorElementDataTypeBool,
}

func dtypeOf(t ort.TensorElementDataType) (tensor.DType, bool) {
	for d, o := range ortTypes {
		if o == t {
			return d, true
		}
	}
	return "", false
}

var optLevels = map[string]ort.GraphOptimizationLevel{
	"all":      ort.GraphOptimizationLevelEnableAll,
	"extended": ort.GraphOptimizationLevelEnableExtended,
	"basic":    ort.GraphOptimizationLevelEnableBasic,
	"disabled": ort.GraphOptimizationLevelDisableAll,
}

// defaultIntraOpThreads shares the machine's cores between a version's
// instances, so that concurrent runs do not oversubscribe the CPU.
func defaultIntraOpThreads(instances int) int {
	n := runtime.NumCPU() / max(instances, 1)
	return max(n, 1)
}

var unavailableOnce sync.Map // provider -> *sync.Once

// providerUnavailable says why a provider cannot be used: once per process
// at warn level (the CUDA libraries are missing, say, which is the same
// for every model), at debug level after that.
func providerUnavailable(log *slog.Logger, provider string, err error) {
	once, _ := unavailableOnce.LoadOrStore(provider, new(sync.Once))
	said := true
	once.(*sync.Once).Do(func() {
		said = false
		log.Warn("execution provider unavailable; models that list it fall back to the next (said once)", "provider", provider, "error", err)
	})
	if said {
		log.Debug("execution provider unavailable", "provider", provider, "error", err)
	}
}

// newSession creates a session for spec from the ONNX bytes, trying the
// bundle's execution providers in order and recording the one it got.
func newSession(spec *bundle.Spec, onnx []byte, log *slog.Logger) (*session, error) {
	var lastErr error
	for _, p := range spec.Execution.Providers {
		opts, err := sessionOptions(spec, p)
		if err != nil {
			lastErr = err
			providerUnavailable(log, p, err)
			continue
		}
		s := &session{provider: p}
		for _, in := range spec.Inputs {
			s.inputs = append(s.inputs, in.Name)
		}
		s.batched = spec.MaxBatchSize > 0
		for _, out := range spec.Outputs {
			s.outputs = append(s.outputs, out.Name)
			var dims []int64
			if out.DataType == string(tensor.Float16) {
				dims = out.Dims // fixed (bundle validation)
			}
			s.prealloc = append(s.prealloc, dims)
		}
		s.s, err = ort.NewDynamicAdvancedSessionWithONNXData(onnx, s.inputs, s.outputs, opts)
		_ = opts.Destroy()
		if err != nil {
			lastErr = err
			if p == "cuda" || p == "tensorrt" {
				providerUnavailable(log, p, err)
			} else {
				log.Warn("creating session failed; trying the next provider", "provider", p, "error", err)
			}
			continue
		}
		return s, nil
	}
	return nil, fmt.Errorf("no execution provider could run the model (tried %v): %w", spec.Execution.Providers, lastErr)
}

func sessionOptions(spec *bundle.Spec, provider string) (*ort.SessionOptions, error) {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*ort.SessionOptions, error) {
		_ = opts.Destroy()
		return nil, err
	}
	intra := spec.Execution.IntraOpThreads
	if intra == 0 {
		intra = defaultIntraOpThreads(spec.InstanceCount)
	}
	inter := max(spec.Execution.InterOpThreads, 1)
	if err := opts.SetIntraOpNumThreads(intra); err != nil {
		return fail(err)
	}
	if err := opts.SetInterOpNumThreads(inter); err != nil {
		return fail(err)
	}
	if err := opts.SetGraphOptimizationLevel(optLevels[spec.Execution.GraphOptimization]); err != nil {
		return fail(err)
	}
	spin := "0"
	if spec.Execution.AllowSpinning {
		spin = "1"
	}
	for _, k := range []string{"session.intra_op.allow_spinning", "session.inter_op.allow_spinning"} {
		if err := opts.AddSessionConfigEntry(k, spin); err != nil {
			return fail(err)
		}
	}
	switch provider {
	case "cpu":
	case "cuda":
		cuda, err := ort.NewCUDAProviderOptions()
		if err != nil {
			return fail(err)
		}
		defer func() { _ = cuda.Destroy() }()
		if err := cuda.Update(spec.Execution.CUDA.ProviderOptions()); err != nil {
			return fail(fmt.Errorf("cuda options: %w", err))
		}
		if err := opts.AppendExecutionProviderCUDA(cuda); err != nil {
			return fail(err)
		}
	case "tensorrt":
		trt, err := ort.NewTensorRTProviderOptions()
		if err != nil {
			return fail(err)
		}
		defer func() { _ = trt.Destroy() }()
		if err := trt.Update(spec.Execution.TensorRT.ProviderOptions()); err != nil {
			return fail(fmt.Errorf("tensorrt options: %w", err))
		}
		if err := opts.AppendExecutionProviderTensorRT(trt); err != nil {
			return fail(err)
		}
	default:
		return fail(fmt.Errorf("unknown execution provider %q", provider))
	}
	return opts, nil
}

// graphInfo reads the ONNX graph's declared inputs and outputs.
func graphInfo(onnx []byte) (ins, outs []ort.InputOutputInfo, err error) {
	return ort.GetInputOutputInfoWithONNXData(onnx)
}

// run feeds inputs (in declared order) and returns the outputs in declared order.
func (s *session) run(inputs []*tensor.Tensor) ([]*tensor.Tensor, error) {
	values := make([]ort.Value, len(inputs))
	defer func() {
		for _, v := range values {
			if v != nil {
				_ = v.Destroy()
			}
		}
	}()
	for i, t := range inputs {
		v, err := ort.NewCustomDataTensor(ort.NewShape(t.Shape...), t.Data, ortTypes[t.DType])
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", t.Name, err)
		}
		values[i] = v
	}
	outs := make([]ort.Value, len(s.outputs))
	for i, dims := range s.prealloc {
		if dims == nil {
			continue
		}
		if s.batched && len(inputs) > 0 && len(inputs[0].Shape) > 0 {
			dims = append([]int64{inputs[0].Shape[0]}, dims...)
		}
		n, err := tensor.NumElements(dims)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", s.outputs[i], err)
		}
		v, err := ort.NewCustomDataTensor(ort.NewShape(dims...), make([]byte, 2*n), ort.TensorElementDataTypeFloat16)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", s.outputs[i], err)
		}
		outs[i] = v
	}
	if err := s.s.Run(values, outs); err != nil {
		for _, v := range outs {
			if v != nil {
				_ = v.Destroy()
			}
		}
		return nil, err
	}
	result := make([]*tensor.Tensor, len(outs))
	var convErr error
	for i, v := range outs {
		if convErr == nil {
			result[i], convErr = fromValue(s.outputs[i], v)
		}
		if v != nil {
			_ = v.Destroy()
		}
	}
	return result, convErr
}

// fromValue turns an output of Run into a tensor.Tensor over its Go data.
func fromValue(name string, v ort.Value) (*tensor.Tensor, error) {
	shape := []int64(v.GetShape())
	dt, ok := dtypeOf(ort.TensorElementDataType(v.DataType()))
	if !ok {
		return nil, fmt.Errorf("output %q has unsupported element type %v", name, v.DataType())
	}
	var data []byte
	switch t := v.(type) {
	case *ort.Tensor[float32]:
		data = asBytes(t.GetData())
	case *ort.Tensor[float64]:
		data = asBytes(t.GetData())
	case *ort.Tensor[int8]:
		data = asBytes(t.GetData())
	case *ort.Tensor[uint8]:
		data = asBytes(t.GetData())
	case *ort.Tensor[int16]:
		data = asBytes(t.GetData())
	case *ort.Tensor[uint16]:
		data = asBytes(t.GetData())
	case *ort.Tensor[int32]:
		data = asBytes(t.GetData())
	case *ort.Tensor[int64]:
		data = asBytes(t.GetData())
	case *ort.Tensor[bool]:
		data = asBytes(t.GetData())
	case *ort.CustomDataTensor:
		data = t.GetData()
	default:
		return nil, fmt.Errorf("output %q is not a tensor (%T)", name, v)
	}
	// onnxruntime_go copied the output out of ONNX Runtime's memory into a
	// Go slice, which Destroy lets go of: the tensor can keep it.
	return &tensor.Tensor{Name: name, DType: dt, Shape: shape, Data: data}, nil
}

// asBytes views a numeric slice's memory as bytes (little-endian on every
// platform we build for).
func asBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(zero)))
}

func (s *session) close() {
	if s.s != nil {
		_ = s.s.Destroy()
		s.s = nil
	}
}

func readModel(path string, maxBytes int64) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > maxBytes {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d allowed", path, st.Size(), maxBytes)
	}
	return os.ReadFile(path)
}
