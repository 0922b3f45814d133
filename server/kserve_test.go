package server

import (
	"encoding/binary"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/internal/testrepo"
	kpb "github.com/voxserve/voxserve/proto/inference"
)

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// warmAffine is the affine bundle with a model_warmup.
func warmAffine() testrepo.Bundle {
	b := testrepo.Affine()
	b.YAML += "model_warmup: [{name: full batch, batch_size: 4, inputs: {x: {random_data: true}}}]\n"
	return b
}

func TestKServeHealthAndMetadata(t *testing.T) {
	h := start(t, testrepo.Write(t, warmAffine()), Options{})
	k := kpb.NewGRPCInferenceServiceClient(h.conn)
	live, err := k.ServerLive(ctxT(t), &kpb.ServerLiveRequest{})
	require.NoError(t, err)
	assert.True(t, live.GetLive())
	ready, err := k.ServerReady(ctxT(t), &kpb.ServerReadyRequest{})
	require.NoError(t, err)
	assert.True(t, ready.GetReady())
	mr, err := k.ModelReady(ctxT(t), &kpb.ModelReadyRequest{Name: "affine"})
	require.NoError(t, err)
	assert.True(t, mr.GetReady())
	mr, err = k.ModelReady(ctxT(t), &kpb.ModelReadyRequest{Name: "nope"})
	require.NoError(t, err)
	assert.False(t, mr.GetReady())

	sm, err := k.ServerMetadata(ctxT(t), &kpb.ServerMetadataRequest{})
	require.NoError(t, err)
	assert.Equal(t, "voxserve", sm.GetName())
	md, err := k.ModelMetadata(ctxT(t), &kpb.ModelMetadataRequest{Name: "affine"})
	require.NoError(t, err)
	assert.Equal(t, []string{"1"}, md.GetVersions())
	assert.Equal(t, "FP32", md.GetInputs()[0].GetDatatype())
	assert.Equal(t, []int64{-1, 2, 3}, md.GetInputs()[0].GetShape())
	_, err = k.ModelMetadata(ctxT(t), &kpb.ModelMetadataRequest{Name: "nope"})
	assert.Equal(t, codes.NotFound, status.Code(err))

	cfg, err := k.ModelConfig(ctxT(t), &kpb.ModelConfigRequest{Name: "affine"})
	require.NoError(t, err)
	c := cfg.GetConfig()
	assert.Equal(t, int32(4), c.GetMaxBatchSize())
	assert.Equal(t, kpb.DataType_TYPE_FP32, c.GetInput()[0].GetDataType())
	assert.Equal(t, []int64{2, 3}, c.GetInput()[0].GetDims())
	assert.Equal(t, int32(1), c.GetInstanceGroup()[0].GetCount())
	assert.Nil(t, c.GetDynamicBatching(), "the affine bundle does not batch")
	require.Len(t, c.GetModelWarmup(), 1)
	w := c.GetModelWarmup()[0]
	assert.Equal(t, "full batch", w.GetName())
	assert.Equal(t, uint32(4), w.GetBatchSize())
	assert.Equal(t, uint32(1), w.GetCount())
	assert.Equal(t, []int64{2, 3}, w.GetInputs()["x"].GetDims())
	assert.True(t, w.GetInputs()["x"].GetRandomData())
	assert.Equal(t, kpb.DataType_TYPE_FP32, w.GetInputs()["x"].GetDataType())
}

func TestKServeModelInfer(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{})
	k := kpb.NewGRPCInferenceServiceClient(h.conn)
	x := []float32{0, 1, 2, 3, 4, 5}
	in := &kpb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}}

	// Raw contents.
	resp, err := k.ModelInfer(ctxT(t), &kpb.ModelInferRequest{ModelName: "affine", Id: "r7", Inputs: []*kpb.ModelInferRequest_InferInputTensor{in},
		RawInputContents: [][]byte{f32bytes(x...)}})
	require.NoError(t, err)
	assert.Equal(t, "r7", resp.GetId())
	assert.Equal(t, "1", resp.GetModelVersion())
	require.Len(t, resp.GetOutputs(), 1)
	assert.Equal(t, "y", resp.Outputs[0].GetName())
	assert.Equal(t, []int64{1, 2, 3}, resp.Outputs[0].GetShape())
	assert.Equal(t, f32bytes(1, 3, 5, 7, 9, 11), resp.GetRawOutputContents()[0]) // 2x + 1

	// Typed contents, with the parameters voxserve reads.
	typed := &kpb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}, Contents: &kpb.InferTensorContents{Fp32Contents: x}}
	resp, err = k.ModelInfer(ctxT(t), &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{typed},
		Parameters: map[string]*kpb.InferParameter{
			"priority": {ParameterChoice: &kpb.InferParameter_Uint64Param{Uint64Param: 1}},
			"timeout":  {ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: 10_000_000}},
		}})
	require.NoError(t, err)
	assert.Equal(t, f32bytes(1, 3, 5, 7, 9, 11), resp.GetRawOutputContents()[0])

	stats, err := k.ModelStatistics(ctxT(t), &kpb.ModelStatisticsRequest{Name: "affine"})
	require.NoError(t, err)
	require.Len(t, stats.GetModelStats(), 1)
	ms := stats.ModelStats[0]
	assert.Equal(t, uint64(2), ms.GetInferenceCount())
	assert.Equal(t, uint64(2), ms.GetExecutionCount())
	assert.Equal(t, uint64(2), ms.GetInferenceStats().GetSuccess().GetCount())
	assert.Positive(t, ms.GetInferenceStats().GetComputeInfer().GetNs())
	assert.Positive(t, ms.GetLastInference())
	require.Len(t, ms.GetBatchStats(), 1)
	assert.Equal(t, uint64(1), ms.BatchStats[0].GetBatchSize())
	_, err = k.ModelStatistics(ctxT(t), &kpb.ModelStatisticsRequest{Name: "nope"})
	assert.Equal(t, codes.NotFound, status.Code(err))

	for _, tc := range []struct {
		name string
		req  *kpb.ModelInferRequest
		code codes.Code
		msg  string
	}{
		{"no model", &kpb.ModelInferRequest{}, codes.InvalidArgument, "model_name: required"},
		{"unknown model", &kpb.ModelInferRequest{ModelName: "nope", Inputs: []*kpb.ModelInferRequest_InferInputTensor{typed}}, codes.NotFound, `model "nope" is not loaded`},
		{"no inputs", &kpb.ModelInferRequest{ModelName: "affine"}, codes.InvalidArgument, "inputs: at least one input is required"},
		{"bad datatype", &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "BYTES", Shape: []int64{1}}}},
			codes.InvalidArgument, `inputs[0].datatype: "BYTES" is not supported`},
		{"raw count", &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{{1}, {2}}},
			codes.InvalidArgument, "raw_input_contents: 2 entries for 1 inputs"},
		{"raw length", &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{f32bytes(1, 2)}},
			codes.InvalidArgument, `inputs[0] "x"`},
		{"wrong shape", &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 3, 2}}},
			RawInputContents: [][]byte{f32bytes(x...)}}, codes.InvalidArgument, "model expects [?,2,3]"},
		{"unknown output", &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{f32bytes(x...)},
			Outputs: []*kpb.ModelInferRequest_InferRequestedOutputTensor{{Name: "z"}}}, codes.InvalidArgument, `model "affine" has no output "z"`},
		{"bad priority", &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{f32bytes(x...)},
			Parameters: map[string]*kpb.InferParameter{"priority": {ParameterChoice: &kpb.InferParameter_StringParam{StringParam: "stat"}}}},
			codes.InvalidArgument, `parameters["priority"]: want a non-negative integer`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := k.ModelInfer(ctxT(t), tc.req)
			assert.Equal(t, tc.code, status.Code(err), "%v", err)
			assert.Contains(t, status.Convert(err).Message(), tc.msg)
		})
	}
}

func TestKServeRepository(t *testing.T) {
	repo := testrepo.Write(t, testrepo.Affine(), testrepo.Hyperdensity())
	h := start(t, repo, Options{})
	k := kpb.NewGRPCInferenceServiceClient(h.conn)
	_, err := k.RepositoryModelUnload(ctxT(t), &kpb.RepositoryModelUnloadRequest{ModelName: "affine"})
	require.NoError(t, err)
	idx, err := k.RepositoryIndex(ctxT(t), &kpb.RepositoryIndexRequest{})
	require.NoError(t, err)
	require.Len(t, idx.GetModels(), 2)
	assert.Equal(t, "affine", idx.Models[0].GetName())
	assert.Equal(t, "UNAVAILABLE", idx.Models[0].GetState())
	assert.Equal(t, "READY", idx.Models[1].GetState())
	idx, err = k.RepositoryIndex(ctxT(t), &kpb.RepositoryIndexRequest{Ready: true})
	require.NoError(t, err)
	assert.Len(t, idx.GetModels(), 1)
	_, err = k.RepositoryModelLoad(ctxT(t), &kpb.RepositoryModelLoadRequest{ModelName: "affine"})
	require.NoError(t, err)
	mr, err := k.ModelReady(ctxT(t), &kpb.ModelReadyRequest{Name: "affine"})
	require.NoError(t, err)
	assert.True(t, mr.GetReady())
	_, err = k.RepositoryModelLoad(ctxT(t), &kpb.RepositoryModelLoadRequest{ModelName: "missing"})
	assert.Error(t, err)
}

// Triton's own Python client, from PyPI, against voxserve: the point of
// the protocol is that it works unchanged. scripts/tritonclient_check.py
// also compares our proto's field numbers with the client's descriptors.
func TestKServeWithTritonClient(t *testing.T) {
	py := "../.venv/bin/python"
	if _, err := os.Stat(py); err != nil || exec.Command(py, "-c", "import tritonclient.grpc").Run() != nil {
		if os.Getenv("VOXSERVE_REQUIRE_PYTHON") != "" {
			t.Fatal("tritonclient is missing from .venv; run make venv")
		}
		t.Skip("no .venv with tritonclient")
	}
	h := start(t, testrepo.Write(t, warmAffine()), Options{SharedMemory: true})
	script, _ := filepath.Abs("../scripts/tritonclient_check.py")
	out, err := exec.Command(py, script, h.addr).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "tritonclient: all checks passed")
}

// Triton's perf_analyzer (from PyPI's tritonclient wheel; make test
// fetches it) runs a short concurrency sweep against voxserve with dynamic
// batching on, and must report no error and the server-side statistics.
// bench/perf_analyzer.sh runs the full sweep on a reference bundle.
func TestKServeWithPerfAnalyzer(t *testing.T) {
	pa, _ := filepath.Abs("../.deps/perf_analyzer/run")
	if _, err := os.Stat(pa); err != nil {
		if os.Getenv("VOXSERVE_REQUIRE_PYTHON") != "" {
			t.Fatal("perf_analyzer is missing; run make test (scripts/fetch-perf-analyzer.sh)")
		}
		t.Skip("no .deps/perf_analyzer")
	}
	b := testrepo.Affine()
	b.YAML += "dynamic_batching:\n  max_queue_delay_microseconds: 500\n"
	h := start(t, testrepo.Write(t, b), Options{SharedMemory: true})
	// Tensors in the messages, then in system shared memory regions that
	// perf_analyzer registers itself.
	for _, shm := range []string{"none", "system"} {
		t.Run(shm, func(t *testing.T) {
			out, err := exec.Command(pa, "-m", "affine", "-i", "grpc", "-u", h.addr, "--concurrency-range", "1:4:3",
				"--shared-memory", shm, "--measurement-interval", "500", "--max-trials", "20", "--stability-percentage", "50").CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.NotContains(t, strings.ToLower(string(out)), "error", "%s", out)
			assert.Contains(t, string(out), "Concurrency: 4, throughput:")
			assert.Contains(t, string(out), "Server: ")
			assert.Contains(t, string(out), "Successful request count:")
		})
	}
}

func TestKServeModelStreamInfer(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{})
	k := kpb.NewGRPCInferenceServiceClient(h.conn)
	stream, err := k.ModelStreamInfer(ctxT(t))
	require.NoError(t, err)
	in := &kpb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}}
	for i, model := range []string{"affine", "nope", "affine"} {
		require.NoError(t, stream.Send(&kpb.ModelInferRequest{ModelName: model, Id: strconv.Itoa(i),
			Inputs: []*kpb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{f32bytes(float32(i), 1, 2, 3, 4, 5)}}))
	}
	require.NoError(t, stream.CloseSend())
	got := map[string]*kpb.ModelStreamInferResponse{}
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		got[r.GetInferResponse().GetId()] = r
	}
	require.Len(t, got, 3)
	assert.Empty(t, got["0"].GetErrorMessage())
	assert.Equal(t, f32bytes(1, 3, 5, 7, 9, 11), got["0"].GetInferResponse().GetRawOutputContents()[0])
	assert.Equal(t, f32bytes(5, 3, 5, 7, 9, 11), got["2"].GetInferResponse().GetRawOutputContents()[0])
	assert.Contains(t, got["1"].GetErrorMessage(), `request "1": NotFound: model "nope" is not loaded`)
}

func TestPlacement(t *testing.T) {
	spec := &bundle.Spec{Execution: bundle.Execution{TensorRT: bundle.TensorRTOptions{FP16: true}}}
	for _, tc := range []struct {
		provider, accel, precision string
		kind                       kpb.ModelInstanceGroup_Kind
	}{
		{"cpu", "", "", kpb.ModelInstanceGroup_KIND_CPU},
		{"cuda", "", "", kpb.ModelInstanceGroup_KIND_GPU},
		{"tensorrt", "tensorrt", "FP16", kpb.ModelInstanceGroup_KIND_GPU},
	} {
		kind, opt := placement(spec, tc.provider)
		assert.Equal(t, tc.kind, kind, tc.provider)
		if tc.accel == "" {
			assert.Nil(t, opt, tc.provider)
			continue
		}
		acc := opt.GetExecutionAccelerators().GetGpuExecutionAccelerator()
		require.Len(t, acc, 1)
		assert.Equal(t, tc.accel, acc[0].GetName())
		assert.Equal(t, tc.precision, acc[0].GetParameters()["precision_mode"])
	}
}
