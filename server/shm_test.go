package server

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/internal/testrepo"
	kpb "github.com/voxserve/voxserve/proto/inference"
)

var shmSeq atomic.Int64

// shmObject creates a POSIX shared memory object of n bytes, as a client's
// shm_open + ftruncate would, and returns its key and path.
func shmObject(t testing.TB, n int) (key, path string) {
	t.Helper()
	if st, err := os.Stat(shmDir); err != nil || !st.IsDir() {
		t.Skip("no " + shmDir)
	}
	key = fmt.Sprintf("/voxserve-test-%d-%d", os.Getpid(), shmSeq.Add(1))
	path = filepath.Join(shmDir, key[1:])
	require.NoError(t, os.WriteFile(path, make([]byte, n), 0o600))
	t.Cleanup(func() { _ = os.Remove(path) })
	return key, path
}

func shmParams(region string, size, off int64) map[string]*kpb.InferParameter {
	p := map[string]*kpb.InferParameter{
		"shared_memory_region":    {ParameterChoice: &kpb.InferParameter_StringParam{StringParam: region}},
		"shared_memory_byte_size": {ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: size}},
	}
	if off >= 0 {
		p["shared_memory_offset"] = &kpb.InferParameter{ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: off}}
	}
	return p
}

// An input read from, and an output written to, one shared memory region
// at different offsets: the message carries neither tensor.
func TestSharedMemoryInfer(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{SharedMemory: true})
	c := kpb.NewGRPCInferenceServiceClient(h.conn)
	ctx := context.Background()
	key, path := shmObject(t, 4096)
	x := []float32{0, 1, 2, 3, 4, 5, -1, -2, -3, -4, -5, -6}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(f32bytes(x...), 128+64) // registered at 128; the input at 64 in it
	require.NoError(t, err)
	require.NoError(t, f.Close())

	_, err = c.SystemSharedMemoryRegister(ctx, &kpb.SystemSharedMemoryRegisterRequest{Name: "io", Key: key, Offset: 128, ByteSize: 1024})
	require.NoError(t, err)
	st, err := c.SystemSharedMemoryStatus(ctx, &kpb.SystemSharedMemoryStatusRequest{})
	require.NoError(t, err)
	require.Contains(t, st.GetRegions(), "io")
	assert.Equal(t, key, st.GetRegions()["io"].GetKey())
	assert.Equal(t, uint64(1024), st.GetRegions()["io"].GetByteSize())
	md, err := c.ServerMetadata(ctx, &kpb.ServerMetadataRequest{})
	require.NoError(t, err)
	assert.Contains(t, md.GetExtensions(), "system_shared_memory")

	resp, err := c.ModelInfer(ctx, &kpb.ModelInferRequest{ModelName: "affine",
		Inputs:  []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{2, 2, 3}, Parameters: shmParams("io", 48, 64)}},
		Outputs: []*kpb.ModelInferRequest_InferRequestedOutputTensor{{Name: "y", Parameters: shmParams("io", 48, 512)}}})
	require.NoError(t, err)
	require.Len(t, resp.GetOutputs(), 1)
	assert.Equal(t, []int64{2, 2, 3}, resp.GetOutputs()[0].GetShape())
	assert.Equal(t, "io", resp.GetOutputs()[0].GetParameters()["shared_memory_region"].GetStringParam())
	assert.Equal(t, int64(48), resp.GetOutputs()[0].GetParameters()["shared_memory_byte_size"].GetInt64Param())
	assert.Empty(t, resp.GetRawOutputContents()[0], "the output went to shared memory")

	got, err := os.ReadFile(path)
	require.NoError(t, err)
	want := make([]float32, len(x))
	for i, v := range x {
		want[i] = 2*v + 1
	}
	assert.Equal(t, f32bytes(want...), got[128+512:128+512+48])

	// An input in shared memory and one in the message: the output comes
	// back in the message when it names no region.
	resp, err = c.ModelInfer(ctx, &kpb.ModelInferRequest{ModelName: "affine",
		Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{2, 2, 3}, Parameters: shmParams("io", 48, 64)}}})
	require.NoError(t, err)
	assert.Equal(t, f32bytes(want...), resp.GetRawOutputContents()[0])

	_, err = c.SystemSharedMemoryUnregister(ctx, &kpb.SystemSharedMemoryUnregisterRequest{})
	require.NoError(t, err)
	st, err = c.SystemSharedMemoryStatus(ctx, &kpb.SystemSharedMemoryStatusRequest{})
	require.NoError(t, err)
	assert.Empty(t, st.GetRegions())
}

func TestSharedMemoryErrors(t *testing.T) {
	ctx := context.Background()
	off := start(t, testrepo.Write(t, testrepo.Affine()), Options{})
	oc := kpb.NewGRPCInferenceServiceClient(off.conn)
	_, err := oc.SystemSharedMemoryRegister(ctx, &kpb.SystemSharedMemoryRegisterRequest{Name: "a", Key: "/a", ByteSize: 8})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	_, err = oc.ModelInfer(ctx, &kpb.ModelInferRequest{ModelName: "affine",
		Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}, Parameters: shmParams("a", 24, -1)}}})
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)

	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{SharedMemory: true})
	c := kpb.NewGRPCInferenceServiceClient(h.conn)
	key, _ := shmObject(t, 256)
	_, err = c.SystemSharedMemoryRegister(ctx, &kpb.SystemSharedMemoryRegisterRequest{Name: "r", Key: key, ByteSize: 64})
	require.NoError(t, err)

	register := []struct {
		name string
		req  *kpb.SystemSharedMemoryRegisterRequest
		code codes.Code
		msg  string
	}{
		{"no name", &kpb.SystemSharedMemoryRegisterRequest{Key: key, ByteSize: 8}, codes.InvalidArgument, "name: required"},
		{"taken name", &kpb.SystemSharedMemoryRegisterRequest{Name: "r", Key: key, ByteSize: 8}, codes.AlreadyExists, `"r" is already registered`},
		{"path in key", &kpb.SystemSharedMemoryRegisterRequest{Name: "p", Key: "/../etc/passwd", ByteSize: 8}, codes.InvalidArgument, "not a shared memory object name"},
		{"dot dot", &kpb.SystemSharedMemoryRegisterRequest{Name: "p", Key: "..", ByteSize: 8}, codes.InvalidArgument, "not a shared memory object name"},
		{"no object", &kpb.SystemSharedMemoryRegisterRequest{Name: "p", Key: "/voxserve-none", ByteSize: 8}, codes.InvalidArgument, "no such file"},
		{"zero size", &kpb.SystemSharedMemoryRegisterRequest{Name: "p", Key: key, ByteSize: 0}, codes.InvalidArgument, "byte_size: must be > 0"},
		{"too big", &kpb.SystemSharedMemoryRegisterRequest{Name: "p", Key: key, Offset: 200, ByteSize: 100}, codes.InvalidArgument, "is 256 bytes; offset 200 + byte_size 100 does not fit"},
		{"overflow", &kpb.SystemSharedMemoryRegisterRequest{Name: "p", Key: key, Offset: math.MaxUint64, ByteSize: 2}, codes.InvalidArgument, "out of range"},
	}
	for _, tt := range register {
		t.Run("register/"+tt.name, func(t *testing.T) {
			_, err := c.SystemSharedMemoryRegister(ctx, tt.req)
			assert.Equal(t, tt.code, status.Code(err), "%v", err)
			assert.ErrorContains(t, err, tt.msg)
		})
	}

	x := func(p map[string]*kpb.InferParameter) []*kpb.ModelInferRequest_InferInputTensor {
		return []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}, Parameters: p}}
	}
	infer := []struct {
		name string
		req  *kpb.ModelInferRequest
		code codes.Code
		msg  string
	}{
		{"unknown region", &kpb.ModelInferRequest{ModelName: "affine", Inputs: x(shmParams("nope", 24, -1))}, codes.NotFound, `inputs[0]: no shared memory region "nope"`},
		{"overrun", &kpb.ModelInferRequest{ModelName: "affine", Inputs: x(shmParams("r", 24, 48))}, codes.InvalidArgument, `offset 48 + byte_size 24 overruns region "r" of 64 bytes`},
		{"no size", &kpb.ModelInferRequest{ModelName: "affine", Inputs: x(map[string]*kpb.InferParameter{"shared_memory_region": {ParameterChoice: &kpb.InferParameter_StringParam{StringParam: "r"}}})},
			codes.InvalidArgument, "shared_memory_byte_size: want a positive integer"},
		{"wrong size for the shape", &kpb.ModelInferRequest{ModelName: "affine", Inputs: x(shmParams("r", 20, -1))}, codes.InvalidArgument, `inputs[0] "x"`},
		{"output region too small", &kpb.ModelInferRequest{ModelName: "affine", Inputs: x(shmParams("r", 24, 0)),
			Outputs: []*kpb.ModelInferRequest_InferRequestedOutputTensor{{Name: "y", Parameters: shmParams("r", 8, 0)}}},
			codes.InvalidArgument, `output "y" is 24 bytes; its shared_memory_byte_size is 8`},
		{"raw entries count only message inputs", &kpb.ModelInferRequest{ModelName: "affine", Inputs: x(shmParams("r", 24, 0)), RawInputContents: [][]byte{make([]byte, 24)}},
			codes.InvalidArgument, "raw_input_contents: 1 entries for 0 inputs"},
	}
	for _, tt := range infer {
		t.Run("infer/"+tt.name, func(t *testing.T) {
			_, err := c.ModelInfer(ctx, tt.req)
			assert.Equal(t, tt.code, status.Code(err), "%v", err)
			assert.ErrorContains(t, err, tt.msg)
		})
	}
	_, err = c.SystemSharedMemoryUnregister(ctx, &kpb.SystemSharedMemoryUnregisterRequest{Name: "nope"})
	assert.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	_, err = c.SystemSharedMemoryStatus(ctx, &kpb.SystemSharedMemoryStatusRequest{Name: "nope"})
	assert.Equal(t, codes.NotFound, status.Code(err), "%v", err)
}

// A region unregistered while a request reads it stays mapped until the
// request is done.
func TestSharedMemoryUnregisterWhileInUse(t *testing.T) {
	key, path := shmObject(t, 64)
	require.NoError(t, os.WriteFile(path, []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"), 0o600))
	s := newSharedMemory()
	require.NoError(t, s.register(&kpb.SystemSharedMemoryRegisterRequest{Name: "r", Key: key, Offset: 16, ByteSize: 32}))
	use := &shmUse{s: s}
	b, ok, err := use.slice("inputs[0]", shmParams("r", 8, 4))
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, s.unregister("r"))
	_, err = s.statusOf("r")
	assert.Equal(t, codes.NotFound, status.Code(err))
	assert.Equal(t, "456789ab", string(b), "still mapped while in use")
	use.done()
	assert.Nil(t, use.held)
}

// A client that truncates its object after registering it gets an error
// for that request; the server does not die of SIGBUS.
func TestSharedMemoryTruncatedObject(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{SharedMemory: true})
	c := kpb.NewGRPCInferenceServiceClient(h.conn)
	ctx := context.Background()
	key, path := shmObject(t, 1<<16)
	_, err := c.SystemSharedMemoryRegister(ctx, &kpb.SystemSharedMemoryRegisterRequest{Name: "t", Key: key, ByteSize: 1 << 16})
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, 0))
	for _, req := range []*kpb.ModelInferRequest{
		{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}, Parameters: shmParams("t", 24, 8192)}}},
		{ModelName: "affine", Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}}},
			RawInputContents: [][]byte{make([]byte, 24)}, Outputs: []*kpb.ModelInferRequest_InferRequestedOutputTensor{{Name: "y", Parameters: shmParams("t", 24, 8192)}}},
	} {
		_, err = c.ModelInfer(ctx, req)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.ErrorContains(t, err, "no longer readable or writable")
	}
	live, err := c.ServerLive(ctx, &kpb.ServerLiveRequest{})
	require.NoError(t, err)
	assert.True(t, live.GetLive())
}

// Requests reading a region while it is unregistered and registered again,
// over and over, get an answer or NOT_FOUND, never a crash or a torn read
// (run with -race).
func TestSharedMemoryUnregisterUnderLoad(t *testing.T) {
	h := start(t, testrepo.Write(t, testrepo.Affine()), Options{SharedMemory: true})
	c := kpb.NewGRPCInferenceServiceClient(h.conn)
	ctx := context.Background()
	key, path := shmObject(t, 4096)
	x := []float32{1, 2, 3, 4, 5, 6}
	require.NoError(t, os.WriteFile(path, append(f32bytes(x...), make([]byte, 4096-24)...), 0o600))
	reg := func() error {
		_, err := c.SystemSharedMemoryRegister(ctx, &kpb.SystemSharedMemoryRegisterRequest{Name: "r", Key: key, ByteSize: 4096})
		return err
	}
	require.NoError(t, reg())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var answered, missing atomic.Int64
	for w := 0; w < 4; w++ { // the affine bundle queues at most 4
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.ModelInfer(ctx, &kpb.ModelInferRequest{ModelName: "affine",
					Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}, Parameters: shmParams("r", 24, 0)}}})
				switch status.Code(err) {
				case codes.OK:
					answered.Add(1)
					assert.Equal(t, f32bytes(3, 5, 7, 9, 11, 13), resp.GetRawOutputContents()[0])
				case codes.NotFound:
					missing.Add(1)
				default:
					t.Errorf("unexpected %v", err)
				}
			}
		}()
	}
	for i := 0; i < 100; i++ {
		_, err := c.SystemSharedMemoryUnregister(ctx, &kpb.SystemSharedMemoryUnregisterRequest{Name: "r"})
		require.NoError(t, err)
		require.NoError(t, reg())
	}
	close(stop)
	wg.Wait()
	assert.Positive(t, answered.Load())
	t.Logf("%d answered, %d found no region", answered.Load(), missing.Load())
}
