package server

import (
	"bytes"
	"compress/zlib"
	"context"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/internal/testrepo"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
	"github.com/voxserve/voxserve/tensor"
)

func TestMain(m *testing.M) {
	if err := engine.Init(""); err != nil {
		os.Stderr.WriteString("server tests: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// harness is a real server on loopback ports and a client connected to it.
type harness struct {
	srv     *Server
	reg     *engine.Registry
	conn    *grpc.ClientConn
	client  pb.InferenceClient
	httpURL string
	addr    string // gRPC
	cancel  context.CancelFunc
	done    chan error
}

func start(t testing.TB, repo string, opts Options) *harness {
	t.Helper()
	h := launch(t, repo, opts)
	var err error
	h.conn, err = grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(WindowBytes), grpc.WithInitialConnWindowSize(WindowBytes),
		grpc.WithWriteBufferSize(IOBufferBytes), grpc.WithReadBufferSize(IOBufferBytes),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxMessageBytes), grpc.MaxCallSendMsgSize(DefaultMaxMessageBytes)))
	require.NoError(t, err)
	h.client = pb.NewInferenceClient(h.conn)
	t.Cleanup(func() { _ = h.conn.Close() })
	return h
}

// launch starts a real server on loopback ports, with no client.
func launch(t testing.TB, repo string, opts Options) *harness {
	t.Helper()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	reg := engine.NewRegistry(repo, log)
	_ = reg.LoadAll()
	opts.Logger = log
	srv := New(reg, opts)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	scheme := "http://"
	if opts.HTTPTLS != nil {
		scheme = "https://"
	}
	h := &harness{srv: srv, reg: reg, cancel: cancel, done: make(chan error, 1), httpURL: scheme + hl.Addr().String(), addr: gl.Addr().String()}
	go func() { h.done <- srv.Serve(ctx, gl, hl) }()
	t.Cleanup(func() {
		h.stop()
		reg.Close()
	})
	return h
}

func (h *harness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func f32Tensor(name string, shape []int64, v []float32) *pb.Tensor {
	t := tensor.FromFloat32(name, shape, v)
	return &pb.Tensor{Name: name, DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: shape, Data: t.Data}
}

func tensorsReq(model string, ts ...*pb.Tensor) *pb.InferRequest {
	return &pb.InferRequest{Model: model, Input: &pb.InferRequest_Tensors{Tensors: &pb.TensorInput{Tensors: ts}},
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_TENSORS}}
}

func TestInferTensor(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{})
	x := []float32{0, 1, 2, 3, 4, 5}
	resp, err := h.client.Infer(ctxT(t), tensorsReq("affine", f32Tensor("x", []int64{1, 2, 3}, x)))
	require.NoError(t, err)
	assert.Equal(t, "affine", resp.GetModel())
	assert.Equal(t, "1", resp.GetVersion())
	require.Len(t, resp.GetTensors(), 1)
	y, err := (&tensor.Tensor{DType: tensor.Float32, Shape: resp.Tensors[0].Shape, Data: resp.Tensors[0].Data}).Float32s()
	require.NoError(t, err)
	assert.Equal(t, []float32{1, 3, 5, 7, 9, 11}, y)
	assert.Positive(t, resp.GetTimings().GetTotalUs())
}

// A CT-like volume: background at 20 HU with a 70 HU block of known size.
func phantom() (*pb.Volume, int) {
	const z, y, x = 6, 10, 12
	v := make([]float32, z*y*x)
	blood := 0
	for k := 0; k < z; k++ {
		for j := 0; j < y; j++ {
			for i := 0; i < x; i++ {
				val := float32(20)
				if k >= 2 && k < 4 && j >= 3 && j < 6 && i >= 4 && i < 9 {
					val = 70
					blood++
				}
				v[(k*y+j)*x+i] = val
			}
		}
	}
	data := tensor.FromFloat32("", []int64{z, y, x}, v).Data
	return &pb.Volume{DataType: pb.DataType_DATA_TYPE_FLOAT32, Dims: []int64{z, y, x}, Data: data, Modality: "CT",
		Geometry: &pb.Geometry{Spacing: []float64{0.5, 0.5, 2}, Origin: []float64{-3, -2.5, 10}, Direction: []float64{1, 0, 0, 0, 1, 0, 0, 0, 1}}}, blood
}

func TestInferVolumeFindingsAndMask(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Hyperdensity()), Options{})
	vol, blood := phantom()
	resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", RequestId: "r1", Input: &pb.InferRequest_Volume{Volume: vol}})
	require.NoError(t, err)
	assert.Equal(t, "r1", resp.GetRequestId())
	require.Len(t, resp.GetFindings(), 1)
	f := resp.Findings[0]
	assert.Equal(t, "hyperdense region", f.GetLabel())
	assert.Equal(t, "50960005", f.GetCode().GetValue())
	assert.InDelta(t, 1/(1+math.Exp(-2)), f.GetProbability(), 1e-6) // sigmoid((70-60)/5)
	assert.True(t, f.GetPresent())

	require.Len(t, resp.GetMasks(), 1)
	m := resp.Masks[0]
	assert.Equal(t, []int64{6, 10, 12}, m.GetDims())
	assert.Equal(t, []float64{0.5, 0.5, 2}, m.GetGeometry().GetSpacing())
	assert.Equal(t, []float64{-3, -2.5, 10}, m.GetGeometry().GetOrigin())
	zr, err := zlib.NewReader(bytes.NewReader(m.GetDataZlib()))
	require.NoError(t, err)
	labels, err := io.ReadAll(zr)
	require.NoError(t, err)
	require.Len(t, labels, 6*10*12)
	n := 0
	for _, l := range labels {
		if l == 1 {
			n++
		}
	}
	assert.Equal(t, blood, n)
	assert.Empty(t, resp.GetTensors(), "tensors only when asked for")

	// A negative study: nothing dense.
	neg := tensor.FromFloat32("", []int64{4, 4}, []float32{10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30, 40})
	resp, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS},
		Input: &pb.InferRequest_Volume{Volume: &pb.Volume{DataType: pb.DataType_DATA_TYPE_FLOAT32, Dims: []int64{4, 4}, Data: neg.Data}}})
	require.NoError(t, err)
	assert.False(t, resp.Findings[0].GetPresent())
	assert.Empty(t, resp.GetMasks())
	assert.Contains(t, resp.GetWarnings()[0], "the study has no modality")

	// int16 volumes are converted to the model's float32.
	i16 := make([]byte, 2*4)
	for i, v := range []int16{-1000, 0, 100, 50} {
		i16[2*i], i16[2*i+1] = byte(uint16(v)), byte(uint16(v)>>8)
	}
	resp, err = h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity",
		Input: &pb.InferRequest_Volume{Volume: &pb.Volume{DataType: pb.DataType_DATA_TYPE_INT16, Dims: []int64{1, 2, 2}, Data: i16, Modality: "ct"}}})
	require.NoError(t, err)
	assert.InDelta(t, 1/(1+math.Exp(-8)), resp.Findings[0].GetProbability(), 1e-6)
}

func TestBadRequests(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine(), testrepo.Hyperdensity()), Options{MaxMessageBytes: 1 << 20})
	good := f32Tensor("x", []int64{1, 2, 3}, make([]float32, 6))
	vol, _ := phantom()
	withVolume := func(edit func(v *pb.Volume)) *pb.InferRequest {
		v, _ := phantom()
		edit(v)
		return &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Volume{Volume: v}}
	}
	tests := []struct {
		name string
		req  *pb.InferRequest
		code codes.Code
		msg  string
	}{
		{"no model", &pb.InferRequest{}, codes.InvalidArgument, "model: required"},
		{"unknown model", tensorsReq("nope", good), codes.NotFound, `model "nope" is not loaded (loaded: [affine hyperdensity])`},
		{"unknown version", &pb.InferRequest{Model: "affine", Version: "7", Input: &pb.InferRequest_Tensors{Tensors: &pb.TensorInput{Tensors: []*pb.Tensor{good}}}},
			codes.NotFound, `model "affine" version 7 is not loaded (loaded: [1])`},
		{"bad version", &pb.InferRequest{Model: "affine", Version: "v1"}, codes.InvalidArgument, `version "v1" is not a version number`},
		{"no input", &pb.InferRequest{Model: "affine"}, codes.InvalidArgument, "input: one of tensors, volume or dicom is required"},
		{"no tensors", tensorsReq("affine"), codes.InvalidArgument, "tensors: at least one tensor is required"},
		{"unset dtype", tensorsReq("affine", &pb.Tensor{Name: "x", Shape: []int64{1, 2, 3}, Data: make([]byte, 24)}),
			codes.InvalidArgument, "tensors[0].data_type: DATA_TYPE_UNSPECIFIED is not a supported data type"},
		{"wrong dtype", tensorsReq("affine", &pb.Tensor{Name: "x", DataType: pb.DataType_DATA_TYPE_INT16, Shape: []int64{1, 2, 3}, Data: make([]byte, 12)}),
			codes.InvalidArgument, `input "x": data type is int16, model expects float32`},
		{"wrong shape", tensorsReq("affine", f32Tensor("x", []int64{1, 3, 2}, make([]float32, 6))),
			codes.InvalidArgument, `input "x": shape [1,3,2]: axis 1 is 3, model expects [?,2,3]`},
		{"empty data", tensorsReq("affine", &pb.Tensor{Name: "x", DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: []int64{1, 2, 3}}),
			codes.InvalidArgument, `input "x": data is empty`},
		{"length mismatch", tensorsReq("affine", &pb.Tensor{Name: "x", DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: []int64{1, 2, 3}, Data: make([]byte, 23)}),
			codes.InvalidArgument, `data is 23 bytes but shape [1 2 3] of float32 needs 24`},
		{"huge shape claim", tensorsReq("affine", &pb.Tensor{Name: "x", DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: []int64{1, 1 << 40, 1 << 40}, Data: make([]byte, 4)}),
			codes.InvalidArgument, `axis 1 is 1099511627776, model expects [?,2,3]`},
		{"oversized message", tensorsReq("affine", &pb.Tensor{Name: "x", DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: []int64{1, 2, 3}, Data: make([]byte, 2<<20)}),
			codes.ResourceExhausted, "larger than max"},
		{"volume dims", withVolume(func(v *pb.Volume) { v.Dims = []int64{1, 2, 3, 4} }), codes.InvalidArgument, "volume.dims: 4 values"},
		{"volume data length", withVolume(func(v *pb.Volume) { v.Data = v.Data[:10] }), codes.InvalidArgument, "volume: data is 10 bytes but shape [6 10 12] of float32 needs 2880"},
		{"volume empty", withVolume(func(v *pb.Volume) { v.Data = nil }), codes.InvalidArgument, "volume.data: empty"},
		{"volume spacing", withVolume(func(v *pb.Volume) { v.Geometry.Spacing = []float64{1, 0, 1} }), codes.InvalidArgument, "volume: spacing[1] is 0, must be > 0"},
		{"volume spacing count", withVolume(func(v *pb.Volume) { v.Geometry.Spacing = []float64{1, 1} }), codes.InvalidArgument, "volume.geometry.spacing: 2 values, want 3"},
		{"volume direction", withVolume(func(v *pb.Volume) { v.Geometry.Direction = []float64{1, 0, 0, 1, 0, 0, 0, 0, 1} }), codes.InvalidArgument, "not orthonormal"},
		{"volume dtype", withVolume(func(v *pb.Volume) { v.DataType = 99 }), codes.InvalidArgument, "volume.data_type: 99 is not a supported data type"},
		{"wrong modality", withVolume(func(v *pb.Volume) { v.Modality = "MR" }), codes.FailedPrecondition, `model "hyperdensity" accepts modality CT, the study is MR`},
		{"volume to multi-axis tensor model", &pb.InferRequest{Model: "affine", Input: &pb.InferRequest_Volume{Volume: vol}},
			codes.InvalidArgument, `input "x": shape [6,10,12]: axis 1 is 10, model expects [?,2,3]`},
		{"dicom empty", &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{}}},
			codes.InvalidArgument, "dicom.instances: empty"},
		{"dicom not images", &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: [][]byte{[]byte("hello")}}}},
			codes.InvalidArgument, "no image series among 1 instances (skipped instances[0]: not a DICOM file)"},
		{"seg of a model without masks", &pb.InferRequest{Model: "affine", Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_DICOM_SEG}}, codes.InvalidArgument, "outputs[0]: OUTPUT_KIND_DICOM_SEG: model \"affine\" has no mask output"},
		{"bad output kind", &pb.InferRequest{Model: "affine", Outputs: []pb.OutputKind{42}}, codes.InvalidArgument, "outputs[0]: 42 is not an output kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.client.Infer(ctxT(t), tt.req)
			require.Error(t, err)
			assert.Equal(t, tt.code, status.Code(err), err)
			assert.Contains(t, status.Convert(err).Message(), tt.msg)
		})
	}
	// None of that disturbed the server.
	_, err := h.client.Infer(ctxT(t), tensorsReq("affine", good))
	require.NoError(t, err)
}

func TestConcurrentClientsWithFailures(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				if w%2 == 0 { // bad requests interleaved with good ones
					_, err := h.client.Infer(ctxT(t), tensorsReq("affine", f32Tensor("x", []int64{1, 6}, make([]float32, 6))))
					if status.Code(err) != codes.InvalidArgument {
						errs <- err
					}
					continue
				}
				resp, err := h.client.Infer(ctxT(t), tensorsReq("affine", f32Tensor("x", []int64{1, 2, 3}, []float32{1, 1, 1, 1, 1, float32(w)})))
				if err != nil {
					if status.Code(err) != codes.ResourceExhausted { // queue bound 4 with 8 good clients
						errs <- err
					}
					continue
				}
				y, _ := (&tensor.Tensor{DType: tensor.Float32, Shape: resp.Tensors[0].Shape, Data: resp.Tensors[0].Data}).Float32s()
				if y[5] != float32(2*w+1) {
					errs <- status.Errorf(codes.Internal, "client %d got %v", w, y)
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestModelsAdminAndHealth(t *testing.T) {
	b := testrepo.Affine()
	b.Versions[2] = b.Versions[1]
	h := start(t, testrepo.Write(t, b, testrepo.Hyperdensity()), Options{})
	ctx := ctxT(t)

	list, err := h.client.ListModels(ctx, &pb.ListModelsRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetModels(), 2)
	assert.Equal(t, "affine", list.Models[0].GetName())
	assert.Equal(t, "2", list.Models[0].GetVersion())
	assert.Equal(t, []int64{-1, 2, 3}, list.Models[0].GetInputs()[0].GetDims())
	assert.Equal(t, "cpu", list.Models[0].GetExecutionProvider())
	assert.Equal(t, "off: the session runs on the CPU", list.Models[0].GetIoBinding())

	info, err := h.client.GetModel(ctx, &pb.GetModelRequest{Name: "affine"})
	require.NoError(t, err)
	assert.Equal(t, []string{"1", "2"}, info.GetAvailableVersions())
	_, err = h.client.GetModel(ctx, &pb.GetModelRequest{Name: "nope"})
	assert.Equal(t, codes.NotFound, status.Code(err))

	hc := healthpb.NewHealthClient(h.conn)
	check := func(svc string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if status.Code(err) == codes.NotFound {
			return healthpb.HealthCheckResponse_SERVICE_UNKNOWN
		}
		require.NoError(t, err)
		return r.GetStatus()
	}
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, check(""))
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, check(ServiceName))
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, check("affine"))

	loaded, err := h.client.LoadModel(ctx, &pb.LoadModelRequest{Name: "affine", Versions: []string{"1"}})
	require.NoError(t, err)
	assert.Equal(t, "1", loaded.GetLoaded()[0].GetVersion())
	_, err = h.client.LoadModel(ctx, &pb.LoadModelRequest{Name: "affine", Versions: []string{"x"}})
	assert.Equal(t, codes.InvalidArgument, status.Code(err))

	un, err := h.client.UnloadModel(ctx, &pb.UnloadModelRequest{Name: "affine"})
	require.NoError(t, err)
	assert.Equal(t, []string{"1"}, un.GetUnloadedVersions())
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, check("affine"))
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, check(""))

	_, err = h.client.UnloadModel(ctx, &pb.UnloadModelRequest{Name: "hyperdensity"})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, check(""))
	resp, err := http.Get(h.httpURL + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)

	_, err = h.client.LoadModel(ctx, &pb.LoadModelRequest{Name: "hyperdensity"})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, check("hyperdensity"))
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(h.httpURL + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
	}
}

func TestReflection(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{})
	stream, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(ctxT(t))
	require.NoError(t, err)
	require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	assert.Contains(t, names, "voxserve.v1.Inference")
	assert.Contains(t, names, "grpc.health.v1.Health")
}

func TestGracefulShutdown(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Slow(60)), Options{ShutdownGrace: 20 * time.Second})
	n := int64(384) // 60 chained 384x384 matmuls on one thread: a few hundred ms
	slowReq := tensorsReq("slow", f32Tensor("x", []int64{1, n, n}, make([]float32, n*n)))

	type result struct {
		err error
		at  time.Time
	}
	inflight := make(chan result, 1)
	go func() {
		_, err := h.client.Infer(context.Background(), slowReq)
		inflight <- result{err, time.Now()}
	}()
	require.Eventually(t, func() bool { return inflightCount(h.srv) == 1 }, 5*time.Second, time.Millisecond)
	// Two more wait in the model's queue behind it.
	queued := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := h.client.Infer(context.Background(), slowReq)
			queued <- err
		}()
	}
	m, release, err := h.reg.Acquire("slow", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return m.Queued() == 2 }, 5*time.Second, time.Millisecond)
	release()

	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	require.Eventually(t, func() bool { return h.srv.draining.Load() }, 5*time.Second, time.Millisecond)

	// Queued work is answered UNAVAILABLE at once, so that its callers can
	// go elsewhere; new work is refused while the running request finishes.
	for i := 0; i < 2; i++ {
		err := <-queued
		assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		assert.Contains(t, status.Convert(err).Message(), "shutting down")
	}
	_, err = h.client.Infer(context.Background(), tensorsReq("slow", f32Tensor("x", []int64{1, 2, 2}, make([]float32, 4))))
	refusedAt := time.Now()
	assert.Equal(t, codes.Unavailable, status.Code(err))
	r := <-inflight
	assert.NoError(t, r.err, "in-flight request must complete during the drain")
	assert.True(t, r.at.After(refusedAt), "the in-flight request should still have been running when new work was refused")
	<-stopped
}

// inflightCount peeks at the server's in-flight calls (test only).
func inflightCount(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// An empty study (constant, or a CT of nothing but air) answers negative
// with a warning, whatever the model makes of it: a constant 70 HU volume
// would otherwise be "hyperdense" everywhere.
func TestInferEmptyStudyIsNegative(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Hyperdensity()), Options{})
	for _, fill := range []float32{70, -1000} {
		vol, _ := phantom()
		v := make([]float32, len(vol.Data)/4)
		for i := range v {
			v[i] = fill
		}
		if fill < 0 {
			v[0] = -950 // air with a little noise is still air
		}
		vol.Data = tensor.FromFloat32("", vol.Dims, v).Data
		resp, err := h.client.Infer(ctxT(t), &pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Volume{Volume: vol},
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_MASK}})
		require.NoError(t, err)
		require.Len(t, resp.GetFindings(), 1)
		assert.False(t, resp.Findings[0].GetPresent(), "fill %v", fill)
		assert.Zero(t, resp.Findings[0].GetProbability())
		assert.Contains(t, strings.Join(resp.GetWarnings(), "\n"), "nothing to find")
	}
}

// /metrics serves Triton's per-model counters and voxserve's own, and they
// follow the requests.
func TestMetrics(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{})
	for i := 0; i < 3; i++ {
		_, err := h.client.Infer(ctxT(t), tensorsReq("affine", f32Tensor("x", []int64{2, 2, 3}, make([]float32, 12))))
		require.NoError(t, err)
	}
	_, err := h.client.Infer(ctxT(t), tensorsReq("affine", f32Tensor("x", []int64{1, 3, 2}, make([]float32, 6))))
	require.Error(t, err)
	resp, err := http.Get(h.httpURL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	text := string(body)
	for _, want := range []string{
		`nv_inference_request_success{model="affine",version="1"} 3`,
		`nv_inference_request_failure{model="affine",version="1"} 1`,
		`nv_inference_count{model="affine",version="1"} 6`,
		`nv_inference_exec_count{model="affine",version="1"} 3`,
		`nv_inference_queue_duration_us{model="affine",version="1"}`,
		`nv_inference_compute_infer_duration_us{model="affine",version="1"}`,
		`voxserve_queue_depth{model="affine",priority="1",version="1"} 0`,
		`voxserve_batch_size_bucket{model="affine",version="1",le="2"} 3`,
		`voxserve_rejected_requests_total{model="affine",reason="queue_full",version="1"} 0`,
		`voxserve_model_info{io_binding="off",model="affine",provider="cpu",version="1"} 1`,
		`go_goroutines`,
	} {
		assert.Contains(t, text, want)
	}
}

// voxserve listens on a Unix domain socket for clients on the same machine.
func TestUnixSocket(t *testing.T) {
	client := startUnix(t, testrepo.Write(t, testrepo.Affine()))
	resp, err := client.Infer(ctxT(t), tensorsReq("affine", f32Tensor("x", []int64{1, 2, 3}, []float32{1, 2, 3, 4, 5, 6})))
	require.NoError(t, err)
	require.Len(t, resp.GetTensors(), 1)
	// A stale socket file from an earlier run is replaced.
	path := filepath.Join(t.TempDir(), "s.sock")
	l1, err := Listen("unix://" + path)
	require.NoError(t, err)
	l1.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, l1.Close())
	l2, err := Listen("unix://" + path)
	require.NoError(t, err)
	require.NoError(t, l2.Close())
}

// gatedConn is a client connection whose reads can be held: a client that
// stops reading its answers.
type gatedConn struct {
	net.Conn
	hold atomic.Bool
	open chan struct{}
}

func (c *gatedConn) Read(p []byte) (int, error) {
	if c.hold.Load() {
		<-c.open
	}
	return c.Conn.Read(p)
}

// A client that stops reading does not hold up the others in its batch:
// its 1 MiB answer stalls on its own connection's flow control while the
// request batched with it is answered at once.
func TestSlowClientDoesNotHoldABatch(t *testing.T) {
	yaml := strings.NewReplacer("dims: [2, 3]", "dims: [512, 512]", "max_queue_size: 4", "max_queue_size: 64").Replace(testrepo.AffineYAML) +
		"dynamic_batching:\n  max_queue_delay_microseconds: 200000\n"
	repo := testrepo.Write(t, testrepo.Bundle{Name: "affine", YAML: yaml, Versions: map[int64][]byte{1: onnxbuild.Affine([]int64{512, 512}, 2, 1).Marshal()}})
	h := start(t, repo, Options{})
	gate := &gatedConn{open: make(chan struct{})}
	slowConn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			gate.Conn = c
			return gate, err
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxMessageBytes), grpc.MaxCallSendMsgSize(DefaultMaxMessageBytes)))
	require.NoError(t, err)
	defer slowConn.Close()
	slow := pb.NewInferenceClient(slowConn)
	req := tensorsReq("affine", f32Tensor("x", []int64{1, 512, 512}, make([]float32, 512*512)))
	_, err = slow.Infer(ctxT(t), req) // connect and warm up
	require.NoError(t, err)

	gate.hold.Store(true)
	slowDone := make(chan error, 1)
	go func() {
		_, err := slow.Infer(ctxT(t), req)
		slowDone <- err
	}()
	time.Sleep(20 * time.Millisecond) // the slow request queues first; the fast one joins its batch
	t0 := time.Now()
	_, err = h.client.Infer(ctxT(t), req)
	require.NoError(t, err)
	assert.Less(t, time.Since(t0), 2*time.Second, "the fast client waited for the slow one")
	select {
	case err := <-slowDone:
		t.Fatalf("the slow client got its answer without reading (%v): the test did not hold it", err)
	default:
	}
	close(gate.open)
	require.NoError(t, <-slowDone)
	m, release, err := h.reg.Acquire("affine", "")
	require.NoError(t, err)
	defer release()
	st := m.Stats()
	assert.Equal(t, int64(3), st.Inferences)
	assert.Equal(t, int64(2), st.Executions, "the two requests ran as one batch")
}
