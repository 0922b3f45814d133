package server

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/voxserve/voxserve/engine"
	"github.com/voxserve/voxserve/internal/testrepo"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// FuzzInfer sends arbitrary wire bytes, decoded as an InferRequest, through
// the Infer handler with real models: it must answer with a status, never
// panic, and never report an internal error for bad input.
func FuzzInfer(f *testing.F) {
	vol, _ := phantom()
	seeds := []proto.Message{
		tensorsReq("affine", f32Tensor("x", []int64{1, 2, 3}, []float32{1, 2, 3, 4, 5, 6})),
		tensorsReq("affine", f32Tensor("x", []int64{2, 2, 3}, make([]float32, 12))),
		&pb.InferRequest{Model: "hyperdensity", Input: &pb.InferRequest_Volume{Volume: vol}},
		&pb.InferRequest{Model: "hyperdensity", Version: "1", Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_TENSORS},
			Input: &pb.InferRequest_Volume{Volume: &pb.Volume{DataType: pb.DataType_DATA_TYPE_INT16, Dims: []int64{2, 2}, Data: make([]byte, 8)}}},
	}
	reg := fuzzSetup(f, seeds...)
	svc := &inference{reg: reg, maxStreamBytes: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.InferRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		// The server caps messages before they reach the handler; so do we.
		if proto.Size(&req) > 1<<20 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := svc.Infer(ctx, &req)
		switch status.Code(err) {
		case codes.Internal, codes.Unknown:
			t.Fatalf("internal error for request %v: %v", &req, err)
		}
	})
}

// FuzzModelInfer does the same for the KServe v2 ModelInfer handler.
func FuzzModelInfer(f *testing.F) {
	in := &kpb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}}
	seeds := []proto.Message{
		&kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{make([]byte, 24)}},
		&kpb.ModelInferRequest{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{2, 2, 3},
			Contents: &kpb.InferTensorContents{Fp32Contents: make([]float32, 12)}}},
			Parameters: map[string]*kpb.InferParameter{"timeout": {ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: 1000}}}},
		&kpb.ModelInferRequest{ModelName: "hyperdensity", Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "image", Datatype: "INT16", Shape: []int64{1, 1, 1, 2, 2},
			Contents: &kpb.InferTensorContents{IntContents: []int32{1, 2, 3, 4}}}}},
	}
	// Tensors in a registered shared memory region: the parameters that
	// name it are outside input too.
	seeds = append(seeds, &kpb.ModelInferRequest{ModelName: "affine",
		Inputs:  []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}, Parameters: shmParams("r", 24, 8)}},
		Outputs: []*kpb.ModelInferRequest_InferRequestedOutputTensor{{Name: "y", Parameters: shmParams("r", 24, 64)}}})
	reg := fuzzSetup(f, seeds...)
	svc := &kserve{reg: reg, ready: func() bool { return true }, shm: newSharedMemory()}
	key, _ := shmObject(f, 4096)
	if err := svc.shm.register(&kpb.SystemSharedMemoryRegisterRequest{Name: "r", Key: key, ByteSize: 4096}); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = svc.shm.unregister("") })
	f.Fuzz(func(t *testing.T, data []byte) {
		var req kpb.ModelInferRequest
		if proto.Unmarshal(data, &req) != nil || proto.Size(&req) > 1<<20 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := svc.ModelInfer(ctx, &req)
		switch status.Code(err) {
		case codes.Internal, codes.Unknown:
			t.Fatalf("internal error for request %v: %v", &req, err)
		}
	})
}

// fuzzSetup adds the seeds to f's corpus and loads the test models.
func fuzzSetup(f *testing.F, seeds ...proto.Message) *engine.Registry {
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := engine.NewRegistry(testrepo.Write(f, testrepo.Affine(), testrepo.Hyperdensity()), log)
	if err := reg.LoadAll(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(reg.Close)
	return reg
}
