package server

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/engine"
	kpb "github.com/voxserve/voxserve/proto/inference"
	"github.com/voxserve/voxserve/tensor"
)

// kserve serves the KServe v2 / Triton gRPC protocol at the tensor level,
// on the same port and the same models as voxserve's own API, so that
// Triton's clients work unchanged.
type kserve struct {
	kpb.UnimplementedGRPCInferenceServiceServer
	reg     *engine.Registry
	ready   func() bool
	live    func() bool
	version string
	// shm is the system shared memory extension; nil when it is off.
	shm *sharedMemory
}

// The KServe names of voxserve's tensor data types.
var kserveTypes = map[tensor.DType]string{
	tensor.Bool: "BOOL", tensor.Uint8: "UINT8", tensor.Uint16: "UINT16", tensor.Int8: "INT8",
	tensor.Int16: "INT16", tensor.Int32: "INT32", tensor.Int64: "INT64", tensor.Float16: "FP16",
	tensor.Float32: "FP32", tensor.Float64: "FP64",
}

// KServeDatatype is a tensor type's KServe name ("FP32"), "" if none.
func KServeDatatype(d tensor.DType) string { return kserveTypes[d] }

func fromKServeType(s string) (tensor.DType, bool) {
	for d, k := range kserveTypes {
		if k == s {
			return d, true
		}
	}
	return "", false
}

func (k *kserve) ServerLive(context.Context, *kpb.ServerLiveRequest) (*kpb.ServerLiveResponse, error) {
	return &kpb.ServerLiveResponse{Live: k.live == nil || k.live()}, nil
}

func (k *kserve) ServerReady(context.Context, *kpb.ServerReadyRequest) (*kpb.ServerReadyResponse, error) {
	return &kpb.ServerReadyResponse{Ready: k.ready()}, nil
}

func (k *kserve) ModelReady(_ context.Context, req *kpb.ModelReadyRequest) (*kpb.ModelReadyResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name: required")
	}
	_, release, err := k.reg.Acquire(req.GetName(), req.GetVersion())
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return &kpb.ModelReadyResponse{Ready: false}, nil
		}
		return nil, err
	}
	release()
	return &kpb.ModelReadyResponse{Ready: k.ready()}, nil
}

// extensions are the KServe/Triton protocol extensions voxserve serves;
// perf_analyzer reports server-side statistics only when "statistics" is
// listed.
var extensions = []string{"model_repository", "model_configuration", "schedule_policy", "statistics"}

func (k *kserve) ServerMetadata(context.Context, *kpb.ServerMetadataRequest) (*kpb.ServerMetadataResponse, error) {
	ext := extensions
	if k.shm != nil {
		ext = append(ext[:len(ext):len(ext)], "system_shared_memory")
	}
	return &kpb.ServerMetadataResponse{Name: "voxserve", Version: k.version, Extensions: ext}, nil
}

// loadedVersions lists a model's loaded versions, oldest first.
func (k *kserve) loadedVersions(name string) []string {
	var vs []int64
	for _, m := range k.reg.Models() {
		if m.Spec.Name == name {
			vs = append(vs, m.Version)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i] < vs[j] })
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strconv.FormatInt(v, 10)
	}
	return out
}

// model acquires a named model version for a metadata call.
func (k *kserve) model(name, version string) (*engine.Model, func(), error) {
	if name == "" {
		return nil, nil, invalid("name: required")
	}
	return k.reg.Acquire(name, version)
}

func (k *kserve) ModelMetadata(_ context.Context, req *kpb.ModelMetadataRequest) (*kpb.ModelMetadataResponse, error) {
	m, release, err := k.model(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, err
	}
	defer release()
	s := m.Spec
	resp := &kpb.ModelMetadataResponse{Name: s.Name, Versions: k.loadedVersions(s.Name), Platform: "onnxruntime_onnx"}
	for _, in := range s.Inputs {
		dt, _ := tensor.ParseDType(in.DataType)
		resp.Inputs = append(resp.Inputs, &kpb.ModelMetadataResponse_TensorMetadata{Name: in.Name, Datatype: kserveTypes[dt], Shape: batchDims(s, in.Dims)})
	}
	for _, out := range s.Outputs {
		dt, _ := tensor.ParseDType(out.DataType)
		resp.Outputs = append(resp.Outputs, &kpb.ModelMetadataResponse_TensorMetadata{Name: out.Name, Datatype: kserveTypes[dt], Shape: batchDims(s, out.Dims)})
	}
	return resp, nil
}

func (k *kserve) ModelInfer(ctx context.Context, req *kpb.ModelInferRequest) (*kpb.ModelInferResponse, error) {
	if req.GetModelName() == "" {
		return nil, invalid("model_name: required")
	}
	ctx, cancel, err := requestParameters(ctx, req.GetParameters())
	if err != nil {
		return nil, err
	}
	defer cancel()
	shm := &shmUse{s: k.shm}
	defer shm.done()
	inputs, err := kserveInputs(req, shm)
	if err != nil {
		return nil, err
	}
	m, release, err := k.reg.Acquire(req.GetModelName(), req.GetModelVersion())
	if err != nil {
		return nil, err
	}
	defer release()
	want := map[string]bool{}
	type shmOut struct {
		region string
		dst    []byte
	}
	toShm := map[string]shmOut{} // outputs to write into shared memory
	for i, o := range req.GetOutputs() {
		if !hasOutput(m.Spec, o.GetName()) {
			return nil, invalid("outputs[%d].name: model %q has no output %q", i, m.Spec.Name, o.GetName())
		}
		want[o.GetName()] = true
		dst, isShm, err := shm.slice(fmt.Sprintf("outputs[%d]", i), o.GetParameters())
		if err != nil {
			return nil, err
		}
		if isShm {
			toShm[o.GetName()] = shmOut{o.GetParameters()["shared_memory_region"].GetStringParam(), dst}
		}
	}
	outs, _, err := m.InferAll(ctx, inputs)
	if err != nil {
		return nil, err
	}
	shm.recycle()
	resp := &kpb.ModelInferResponse{ModelName: m.Spec.Name, ModelVersion: m.VersionString(), Id: req.GetId()}
	for i, t := range outs {
		name := m.Spec.Outputs[i].Name
		if len(want) > 0 && !want[name] {
			continue
		}
		out := &kpb.ModelInferResponse_InferOutputTensor{Name: name, Datatype: kserveTypes[t.DType], Shape: t.Shape}
		data := t.Data
		if o, ok := toShm[name]; ok {
			if len(o.dst) < len(t.Data) {
				return nil, invalid("output %q is %d bytes; its shared_memory_byte_size is %d", name, len(t.Data), len(o.dst))
			}
			if err := shmCopy(o.dst, t.Data); err != nil {
				return nil, status.Errorf(status.Code(err), "output %q: %s", name, status.Convert(err).Message())
			}
			// The bytes are in the region; an empty entry keeps the
			// raw_output_contents indices aligned with the outputs.
			data = nil
			out.Parameters = map[string]*kpb.InferParameter{
				"shared_memory_region":    {ParameterChoice: &kpb.InferParameter_StringParam{StringParam: o.region}},
				"shared_memory_byte_size": {ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: int64(len(t.Data))}},
			}
		}
		resp.Outputs = append(resp.Outputs, out)
		resp.RawOutputContents = append(resp.RawOutputContents, data)
	}
	return resp, nil
}

func hasOutput(s *bundle.Spec, name string) bool {
	for _, o := range s.Outputs {
		if o.Name == name {
			return true
		}
	}
	return false
}

// requestParameters applies the request parameters voxserve reads:
// "timeout" (microseconds, as Triton) shortens the deadline, "priority"
// picks the scheduler's priority level (1 the highest, 0 the bundle's
// default). Others are ignored, as Triton ignores parameters it does not
// know.
func requestParameters(ctx context.Context, params map[string]*kpb.InferParameter) (context.Context, context.CancelFunc, error) {
	cancel := func() {}
	if p, ok := params["priority"]; ok {
		level, err := intParam("priority", p)
		if err != nil {
			return nil, nil, err
		}
		if level > math.MaxInt32 {
			return nil, nil, invalid("parameters[%q]: %d is not a priority level", "priority", level)
		}
		ctx = engine.WithPriority(ctx, int(level))
	}
	if p, ok := params["timeout"]; ok {
		us, err := intParam("timeout", p)
		if err != nil {
			return nil, nil, err
		}
		if us > 0 {
			ctx, cancel = context.WithTimeout(ctx, time.Duration(us)*time.Microsecond)
		}
	}
	return ctx, cancel, nil
}

func intParam(name string, p *kpb.InferParameter) (int64, error) {
	switch v := p.GetParameterChoice().(type) {
	case *kpb.InferParameter_Int64Param:
		if v.Int64Param >= 0 {
			return v.Int64Param, nil
		}
	case *kpb.InferParameter_Uint64Param:
		if v.Uint64Param <= math.MaxInt64 {
			return int64(v.Uint64Param), nil
		}
	}
	return 0, invalid("parameters[%q]: want a non-negative integer", name)
}

// kserveInputs reads the request's tensors: from a shared memory region
// when an input's parameters name one, else from raw_input_contents (one
// entry per input not in shared memory, in order) or typed contents.
func kserveInputs(req *kpb.ModelInferRequest, shm *shmUse) ([]*tensor.Tensor, error) {
	ins := req.GetInputs()
	if len(ins) == 0 {
		return nil, invalid("inputs: at least one input is required")
	}
	raw := req.GetRawInputContents()
	inMessage := 0
	for _, in := range ins {
		if _, ok := in.GetParameters()["shared_memory_region"]; !ok {
			inMessage++
		}
	}
	if len(raw) > 0 && len(raw) != inMessage {
		return nil, invalid("raw_input_contents: %d entries for %d inputs", len(raw), inMessage)
	}
	out := make([]*tensor.Tensor, len(ins))
	next := 0
	for i, in := range ins {
		dt, ok := fromKServeType(in.GetDatatype())
		if !ok {
			return nil, invalid("inputs[%d].datatype: %q is not supported (want one of BOOL, UINT8, UINT16, INT8, INT16, INT32, INT64, FP16, FP32, FP64)", i, in.GetDatatype())
		}
		t := &tensor.Tensor{Name: in.GetName(), DType: dt, Shape: in.GetShape()}
		data, isShm, err := shm.slice(fmt.Sprintf("inputs[%d]", i), in.GetParameters())
		if err != nil {
			return nil, err
		}
		if isShm {
			if in.GetContents() != nil {
				return nil, invalid("inputs[%d]: contents and a shared memory region both given", i)
			}
			if t.Data, err = shm.input(data); err != nil {
				return nil, status.Errorf(status.Code(err), "inputs[%d]: %s", i, status.Convert(err).Message())
			}
		} else if len(raw) > 0 {
			if in.GetContents() != nil {
				return nil, invalid("inputs[%d]: contents and raw_input_contents both given", i)
			}
			t.Data = raw[next]
			next++
		} else {
			data, err := typedContents(dt, in.GetContents())
			if err != nil {
				return nil, invalid("inputs[%d].contents: %v", i, err)
			}
			t.Data = data
		}
		if err := t.Check(); err != nil {
			return nil, invalid("inputs[%d] %q: %v", i, in.GetName(), err)
		}
		out[i] = t
	}
	return out, nil
}

// typedContents packs typed contents into little-endian bytes.
func typedContents(dt tensor.DType, c *kpb.InferTensorContents) ([]byte, error) {
	var b []byte
	put := func(n int) []byte { b = make([]byte, n*dt.Size()); return b }
	switch dt {
	case tensor.Float32:
		put(len(c.GetFp32Contents()))
		for i, v := range c.GetFp32Contents() {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
	case tensor.Float64:
		put(len(c.GetFp64Contents()))
		for i, v := range c.GetFp64Contents() {
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(v))
		}
	case tensor.Int64:
		put(len(c.GetInt64Contents()))
		for i, v := range c.GetInt64Contents() {
			binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
		}
	case tensor.Int32, tensor.Int16, tensor.Int8:
		// The protocol carries the narrow signed types in int_contents.
		put(len(c.GetIntContents()))
		for i, v := range c.GetIntContents() {
			switch dt {
			case tensor.Int32:
				binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
			case tensor.Int16:
				binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
			default:
				b[i] = byte(v)
			}
		}
	case tensor.Uint16, tensor.Uint8:
		put(len(c.GetUintContents()))
		for i, v := range c.GetUintContents() {
			if dt == tensor.Uint16 {
				binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
			} else {
				b[i] = byte(v)
			}
		}
	case tensor.Bool:
		put(len(c.GetBoolContents()))
		for i, v := range c.GetBoolContents() {
			if v {
				b[i] = 1
			}
		}
	default:
		return nil, fmt.Errorf("%s contents are not supported; send raw_input_contents", kserveTypes[dt])
	}
	return b, nil
}

func (k *kserve) RepositoryIndex(_ context.Context, req *kpb.RepositoryIndexRequest) (*kpb.RepositoryIndexResponse, error) {
	resp := &kpb.RepositoryIndexResponse{}
	loaded := map[string]bool{}
	for _, m := range k.reg.Models() {
		loaded[m.Spec.Name] = true
		resp.Models = append(resp.Models, &kpb.RepositoryIndexResponse_ModelIndex{Name: m.Spec.Name, Version: m.VersionString(), State: "READY"})
	}
	if !req.GetReady() {
		entries, err := os.ReadDir(k.reg.Repository())
		if err != nil {
			return nil, status.Errorf(codes.Internal, "reading the model repository: %v", err)
		}
		for _, e := range entries {
			if _, err := os.Stat(filepath.Join(k.reg.Repository(), e.Name(), bundle.FileName)); err != nil || loaded[e.Name()] {
				continue
			}
			resp.Models = append(resp.Models, &kpb.RepositoryIndexResponse_ModelIndex{Name: e.Name(), State: "UNAVAILABLE", Reason: "not loaded"})
		}
	}
	sort.SliceStable(resp.Models, func(i, j int) bool { return resp.Models[i].Name < resp.Models[j].Name })
	return resp, nil
}

func (k *kserve) RepositoryModelLoad(_ context.Context, req *kpb.RepositoryModelLoadRequest) (*kpb.RepositoryModelLoadResponse, error) {
	if req.GetModelName() == "" {
		return nil, invalid("model_name: required")
	}
	if _, err := k.reg.Load(req.GetModelName(), nil); err != nil {
		return nil, err
	}
	return &kpb.RepositoryModelLoadResponse{}, nil
}

func (k *kserve) RepositoryModelUnload(_ context.Context, req *kpb.RepositoryModelUnloadRequest) (*kpb.RepositoryModelUnloadResponse, error) {
	if req.GetModelName() == "" {
		return nil, invalid("model_name: required")
	}
	if _, err := k.reg.Unload(req.GetModelName(), 0); err != nil {
		return nil, err
	}
	return &kpb.RepositoryModelUnloadResponse{}, nil
}

func duration(count int64, d time.Duration) *kpb.StatisticDuration {
	return &kpb.StatisticDuration{Count: uint64(max(count, 0)), Ns: uint64(max(d.Nanoseconds(), 0))}
}

// ModelStatistics reports the engine's counters, the numbers /metrics serves.
func (k *kserve) ModelStatistics(_ context.Context, req *kpb.ModelStatisticsRequest) (*kpb.ModelStatisticsResponse, error) {
	resp := &kpb.ModelStatisticsResponse{}
	found := false
	for _, m := range k.reg.Models() {
		if (req.GetName() != "" && m.Spec.Name != req.GetName()) || (req.GetVersion() != "" && m.VersionString() != req.GetVersion()) {
			continue
		}
		found = true
		st := m.Stats()
		ms := &kpb.ModelStatistics{Name: m.Spec.Name, Version: m.VersionString(),
			InferenceCount: uint64(st.Inferences), ExecutionCount: uint64(st.Executions),
			InferenceStats: &kpb.InferStatistics{
				Success: duration(st.Success, st.SuccessTime), Fail: duration(st.Failure, st.FailureTime),
				Queue:        duration(st.Success, st.QueueTime),
				ComputeInput: duration(st.Computed, st.RequestInputTime), ComputeInfer: duration(st.Computed, st.RequestInferTime),
				ComputeOutput: duration(st.Computed, st.RequestOutputTime),
			}}
		if !st.LastInference.IsZero() {
			ms.LastInference = uint64(st.LastInference.UnixMilli())
		}
		for _, size := range st.SortedSizes() {
			b := st.BatchSizes[size]
			ms.BatchStats = append(ms.BatchStats, &kpb.InferBatchStatistics{BatchSize: uint64(size),
				ComputeInput: duration(b.Count, b.Input), ComputeInfer: duration(b.Count, b.Infer), ComputeOutput: duration(b.Count, b.Output)})
		}
		resp.ModelStats = append(resp.ModelStats, ms)
	}
	if req.GetName() != "" && !found {
		return nil, status.Errorf(codes.NotFound, "model %q version %q is not loaded", req.GetName(), req.GetVersion())
	}
	return resp, nil
}

// ModelStreamInfer runs each request of the stream as it arrives,
// concurrently, and answers in completion order; a failed request gets an
// error_message naming its id and status, and the stream goes on.
func (k *kserve) ModelStreamInfer(stream kpb.GRPCInferenceService_ModelStreamInferServer) error {
	ctx := stream.Context()
	var mu sync.Mutex // Send is not safe for concurrent use
	var wg sync.WaitGroup
	var sendErr error
	send := func(r *kpb.ModelStreamInferResponse) {
		mu.Lock()
		defer mu.Unlock()
		if sendErr == nil {
			sendErr = stream.Send(r)
		}
	}
	defer wg.Wait()
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := k.ModelInfer(ctx, req)
			if err != nil {
				st := status.Convert(err)
				send(&kpb.ModelStreamInferResponse{ErrorMessage: fmt.Sprintf("request %q: %s: %s", req.GetId(), st.Code(), st.Message()),
					InferResponse: &kpb.ModelInferResponse{ModelName: req.GetModelName(), ModelVersion: req.GetModelVersion(), Id: req.GetId()}})
				return
			}
			send(&kpb.ModelStreamInferResponse{InferResponse: resp})
		}()
	}
}

// Triton's data type enum for voxserve's tensor types.
var configTypes = map[tensor.DType]kpb.DataType{
	tensor.Bool: kpb.DataType_TYPE_BOOL, tensor.Uint8: kpb.DataType_TYPE_UINT8, tensor.Uint16: kpb.DataType_TYPE_UINT16,
	tensor.Int8: kpb.DataType_TYPE_INT8, tensor.Int16: kpb.DataType_TYPE_INT16, tensor.Int32: kpb.DataType_TYPE_INT32,
	tensor.Int64: kpb.DataType_TYPE_INT64, tensor.Float16: kpb.DataType_TYPE_FP16, tensor.Float32: kpb.DataType_TYPE_FP32,
	tensor.Float64: kpb.DataType_TYPE_FP64,
}

// placement is where a model runs in Triton's terms: its instance kind
// and, for TensorRT, the GPU execution accelerator as Triton's ONNX Runtime
// backend names it.
func placement(s *bundle.Spec, provider string) (kpb.ModelInstanceGroup_Kind, *kpb.ModelOptimizationPolicy) {
	switch provider {
	case "cuda":
		return kpb.ModelInstanceGroup_KIND_GPU, nil
	case "tensorrt":
		params := map[string]string{"precision_mode": "FP32"}
		if s.Execution.TensorRT.FP16 {
			params["precision_mode"] = "FP16"
		}
		return kpb.ModelInstanceGroup_KIND_GPU, &kpb.ModelOptimizationPolicy{ExecutionAccelerators: &kpb.ModelOptimizationPolicy_ExecutionAccelerators{
			GpuExecutionAccelerator: []*kpb.ModelOptimizationPolicy_ExecutionAccelerators_Accelerator{{Name: "tensorrt", Parameters: params}}}}
	}
	return kpb.ModelInstanceGroup_KIND_CPU, nil
}

// ModelConfig reports a bundle in Triton's model configuration terms.
func (k *kserve) ModelConfig(_ context.Context, req *kpb.ModelConfigRequest) (*kpb.ModelConfigResponse, error) {
	m, release, err := k.model(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, err
	}
	defer release()
	s := m.Spec
	kind, opt := placement(s, m.Provider())
	cfg := &kpb.ModelConfig{Name: s.Name, Platform: "onnxruntime_onnx", Backend: "onnxruntime", MaxBatchSize: int32(s.MaxBatchSize),
		InstanceGroup: []*kpb.ModelInstanceGroup{{Name: s.Name, Count: int32(s.InstanceCount), Kind: kind}}, Optimization: opt}
	for _, in := range s.Inputs {
		dt, _ := tensor.ParseDType(in.DataType)
		cfg.Input = append(cfg.Input, &kpb.ModelInput{Name: in.Name, DataType: configTypes[dt], Dims: in.Dims})
	}
	for _, out := range s.Outputs {
		dt, _ := tensor.ParseDType(out.DataType)
		cfg.Output = append(cfg.Output, &kpb.ModelOutput{Name: out.Name, DataType: configTypes[dt], Dims: out.Dims})
	}
	if d := s.DynamicBatching; d != nil {
		action := kpb.ModelQueuePolicy_REJECT
		if s.Queue.TimeoutAction == "DELAY" {
			action = kpb.ModelQueuePolicy_DELAY
		}
		db := &kpb.ModelDynamicBatching{MaxQueueDelayMicroseconds: uint64(d.MaxQueueDelayMicroseconds),
			PriorityLevels: uint64(d.PriorityLevels), DefaultPriorityLevel: uint64(d.DefaultPriorityLevel),
			DefaultQueuePolicy: &kpb.ModelQueuePolicy{TimeoutAction: action,
				DefaultTimeoutMicroseconds: uint64(s.Queue.DefaultTimeoutMicroseconds), MaxQueueSize: uint32(s.Queue.MaxQueueSize)}}
		for _, p := range d.PreferredBatchSize {
			db.PreferredBatchSize = append(db.PreferredBatchSize, int32(p))
		}
		cfg.DynamicBatching = db
	}
	for _, w := range s.ModelWarmup {
		mw := &kpb.ModelWarmup{Name: w.Name, BatchSize: uint32(max(w.BatchSize, 1)), Count: uint32(w.Count),
			Inputs: map[string]*kpb.ModelWarmup_Input{}}
		for _, in := range s.Inputs {
			dt, _ := tensor.ParseDType(in.DataType)
			wi := &kpb.ModelWarmup_Input{DataType: configTypes[dt], Dims: w.WarmupDims(in),
				InputDataType: &kpb.ModelWarmup_Input_ZeroData{ZeroData: true}}
			if w.Inputs[in.Name].RandomData {
				wi.InputDataType = &kpb.ModelWarmup_Input_RandomData{RandomData: true}
			}
			mw.Inputs[in.Name] = wi
		}
		cfg.ModelWarmup = append(cfg.ModelWarmup, mw)
	}
	return &kpb.ModelConfigResponse{Config: cfg}, nil
}
