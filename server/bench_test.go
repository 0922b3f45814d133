package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/voxserve/voxserve/audit"
	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/internal/testrepo"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// BenchmarkOverhead512 measures the server's own cost on a gRPC round trip
// over loopback TCP: a 512x512 float32 image (1 MiB) through a model that
// does almost nothing (y = 2x + 1), reported as the p50 of round trip
// minus the server's queue and compute time (PRODUCT.md section 5: under
// 0.3 ms), beside the p50 round trip itself.
func BenchmarkOverhead512(b *testing.B) {
	yaml := strings.NewReplacer("dims: [2, 3]", "dims: [512, 512]", "max_queue_size: 4", "max_queue_size: 64").Replace(testrepo.AffineYAML)
	repo := testrepo.Write(b, testrepo.Bundle{Name: "affine", YAML: yaml, Versions: map[int64][]byte{
		1: onnxbuild.Affine([]int64{512, 512}, 2, 1).Marshal()}})
	h := start(b, repo, Options{})
	for _, tc := range []struct {
		name    string
		outputs []pb.OutputKind
	}{
		{"findings", []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS}}, // the image in, a small answer out
		{"tensors", []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_TENSORS}},   // 1 MiB each way
	} {
		b.Run(tc.name, func(b *testing.B) {
			req := tensorsReq("affine", f32Tensor("x", []int64{1, 512, 512}, make([]float32, 512*512)))
			req.Outputs = tc.outputs
			overhead(b, h.client, req)
		})
	}
	// The same with TLS and a bearer token checked against an access file,
	// then also with an audit record per request: what securing the
	// server costs.
	for _, withAudit := range []bool{false, true} {
		name := "findings-tls-token"
		if withAudit {
			name += "-audit"
		}
		b.Run(name, func(b *testing.B) {
			var opts Options
			if withAudit {
				log, err := audit.Open(filepath.Join(b.TempDir(), "audit.jsonl"))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = log.Close() })
				opts.Audit = log
			}
			s := startSecuredWith(b, repo, opts)
			cc := s.dial(b, "unknown.example", grpc.WithPerRPCCredentials(bearerCreds(inferToken)),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxMessageBytes), grpc.MaxCallSendMsgSize(DefaultMaxMessageBytes)))
			req := tensorsReq("affine", f32Tensor("x", []int64{1, 512, 512}, make([]float32, 512*512)))
			req.Outputs = []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS}
			overhead(b, pb.NewInferenceClient(cc), req)
			s.stop() // before the audit log closes
		})
	}
	// The same over a Unix domain socket, for a client on the same machine.
	b.Run("findings-unix", func(b *testing.B) {
		client := startUnix(b, repo)
		req := tensorsReq("affine", f32Tensor("x", []int64{1, 512, 512}, make([]float32, 512*512)))
		req.Outputs = []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS}
		overhead(b, client, req)
	})
}

// bearerCreds sends a token on every call.
type bearerCreds string

func (b bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearerCreds) RequireTransportSecurity() bool { return true }

// startUnix serves repo on a Unix domain socket and returns a client.
func startUnix(tb testing.TB, repo string) pb.InferenceClient {
	tb.Helper()
	reg := engine.NewRegistry(repo, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := reg.LoadAll(); err != nil {
		tb.Fatal(err)
	}
	srv := New(reg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	addr := "unix://" + filepath.Join(tb.TempDir(), "voxserve.sock")
	lis, err := Listen(addr)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, nil) }()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(WindowBytes), grpc.WithInitialConnWindowSize(WindowBytes),
		grpc.WithWriteBufferSize(IOBufferBytes), grpc.WithReadBufferSize(IOBufferBytes),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxMessageBytes), grpc.MaxCallSendMsgSize(DefaultMaxMessageBytes)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = conn.Close()
		cancel()
		<-done
		reg.Close()
	})
	return pb.NewInferenceClient(conn)
}

func overhead(b *testing.B, client pb.InferenceClient, req *pb.InferRequest) {
	ctx := context.Background()
	for i := 0; i < 20; i++ { // warm-up
		if _, err := client.Infer(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	var over, rtt, inside []float64
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		resp, err := client.Infer(ctx, req)
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		tm := resp.GetTimings()
		rtt = append(rtt, float64(d.Microseconds()))
		over = append(over, float64(d.Microseconds()-tm.GetQueueUs()-tm.GetInferenceUs()))
		inside = append(inside, float64(tm.GetTotalUs()-tm.GetQueueUs()-tm.GetInferenceUs()))
	}
	b.StopTimer()
	b.ReportMetric(median(over), "overhead-p50-us")
	b.ReportMetric(median(rtt), "rtt-p50-us")
	b.ReportMetric(median(inside), "in-handler-p50-us") // of the overhead: Infer's own work outside the model
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

// BenchmarkGRPCFloor512 is the floor under BenchmarkOverhead512: the same
// 1 MiB request (a pb.InferRequest holding a 512x512 float32 tensor) to a
// gRPC handler that does nothing but answer an empty response, over the
// same loopback TCP with the same transport settings. What it costs is
// gRPC, protobuf and the kernel; the overhead above it is voxserve's.
func BenchmarkGRPCFloor512(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(DefaultMaxMessageBytes), grpc.InitialWindowSize(WindowBytes),
		grpc.InitialConnWindowSize(WindowBytes), grpc.WriteBufferSize(IOBufferBytes), grpc.ReadBufferSize(IOBufferBytes))
	srv.RegisterService(&grpc.ServiceDesc{ServiceName: "floor.Echo", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Call", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := &pb.InferRequest{}
			if err := dec(in); err != nil {
				return nil, err
			}
			return &pb.InferResponse{Model: in.GetModel()}, nil
		}}}}, struct{}{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(WindowBytes), grpc.WithInitialConnWindowSize(WindowBytes),
		grpc.WithWriteBufferSize(IOBufferBytes), grpc.WithReadBufferSize(IOBufferBytes),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(DefaultMaxMessageBytes)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	req := tensorsReq("affine", f32Tensor("x", []int64{1, 512, 512}, make([]float32, 512*512)))
	ctx := context.Background()
	var rtt []float64
	for i := 0; i < 20; i++ {
		if err := conn.Invoke(ctx, "/floor.Echo/Call", req, &pb.InferResponse{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if err := conn.Invoke(ctx, "/floor.Echo/Call", req, &pb.InferResponse{}); err != nil {
			b.Fatal(err)
		}
		rtt = append(rtt, float64(time.Since(t0).Microseconds()))
	}
	b.StopTimer()
	b.ReportMetric(median(rtt), "rtt-p50-us")
}

// BenchmarkKServeOverhead512 is BenchmarkOverhead512's 512x512 float32
// tensor through the KServe endpoint, both ways (1 MiB in, 1 MiB out): in
// the message ("raw"), or in a system shared memory region the client
// registered ("shm"), as Triton's clients pass tensors on one host. The
// overhead is the round trip's median minus the model's mean infer time
// per request over the same run (ModelStatistics' compute_infer).
func BenchmarkKServeOverhead512(b *testing.B) {
	yaml := strings.NewReplacer("dims: [2, 3]", "dims: [512, 512]", "max_queue_size: 4", "max_queue_size: 64").Replace(testrepo.AffineYAML)
	repo := testrepo.Write(b, testrepo.Bundle{Name: "affine", YAML: yaml, Versions: map[int64][]byte{
		1: onnxbuild.Affine([]int64{512, 512}, 2, 1).Marshal()}})
	h := start(b, repo, Options{SharedMemory: true})
	c := kpb.NewGRPCInferenceServiceClient(h.conn)
	ctx := context.Background()
	const n = 512 * 512 * 4
	key, _ := shmObject(b, 2*n)
	if _, err := c.SystemSharedMemoryRegister(ctx, &kpb.SystemSharedMemoryRegisterRequest{Name: "io", Key: key, ByteSize: 2 * n}); err != nil {
		b.Fatal(err)
	}
	in := &kpb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 512, 512}}
	for _, tc := range []struct {
		name string
		req  *kpb.ModelInferRequest
	}{
		{"raw", &kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{make([]byte, n)}}},
		{"shm", &kpb.ModelInferRequest{ModelName: "affine",
			Inputs:  []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 512, 512}, Parameters: shmParams("io", n, 0)}},
			Outputs: []*kpb.ModelInferRequest_InferRequestedOutputTensor{{Name: "y", Parameters: shmParams("io", n, n)}}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for i := 0; i < 20; i++ {
				if _, err := c.ModelInfer(ctx, tc.req); err != nil {
					b.Fatal(err)
				}
			}
			infer := func() (int64, uint64) {
				st, err := c.ModelStatistics(ctx, &kpb.ModelStatisticsRequest{Name: "affine"})
				if err != nil {
					b.Fatal(err)
				}
				s := st.GetModelStats()[0].GetInferenceStats().GetComputeInfer()
				return int64(s.GetNs()), s.GetCount()
			}
			ns0, c0 := infer()
			var rtt []float64
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				if _, err := c.ModelInfer(ctx, tc.req); err != nil {
					b.Fatal(err)
				}
				rtt = append(rtt, float64(time.Since(t0).Microseconds()))
			}
			b.StopTimer()
			ns1, c1 := infer()
			model := float64(ns1-ns0) / float64(max(c1-c0, 1)) / 1e3
			b.ReportMetric(median(rtt), "rtt-p50-us")
			b.ReportMetric(model, "model-mean-us")
			b.ReportMetric(median(rtt)-model, "overhead-p50-us")
		})
	}
}
