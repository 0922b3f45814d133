package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	kpb "github.com/voxserve/voxserve/proto/inference"
	"github.com/voxserve/voxserve/server"
	"github.com/voxserve/voxserve/tensor"
)

// sharedRegion is voxbench's system shared memory object, as a Triton
// client makes one: the input at offset 0, then a slot of the model's
// fixed-size outputs for each call that may be in flight, so that no two
// calls write the same bytes. Outputs with dynamic dims come back in the
// message.
type sharedRegion struct {
	name, path string
	// reqs are the requests to send, one per slot (round robin).
	reqs []*kpb.ModelInferRequest
}

func shmParams(region string, size, off int) map[string]*kpb.InferParameter {
	return map[string]*kpb.InferParameter{
		"shared_memory_region":    {ParameterChoice: &kpb.InferParameter_StringParam{StringParam: region}},
		"shared_memory_byte_size": {ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: int64(size)}},
		"shared_memory_offset":    {ParameterChoice: &kpb.InferParameter_Int64Param{Int64Param: int64(off)}},
	}
}

// elementSize is the bytes of one element of a KServe datatype (0: unknown).
func elementSize(datatype string) int {
	for _, d := range tensor.DTypes() {
		if server.KServeDatatype(d) == datatype {
			return d.Size()
		}
	}
	return 0
}

// shareTensors moves req's input (the data of t) into a new region, with
// slots for outputs, and registers it with the server.
func shareTensors(ctx context.Context, kc kpb.GRPCInferenceServiceClient, req *kpb.ModelInferRequest, data []byte, slots int) (*sharedRegion, error) {
	md, err := kc.ModelMetadata(ctx, &kpb.ModelMetadataRequest{Name: req.GetModelName()})
	if err != nil {
		return nil, err
	}
	type out struct {
		name string
		size int
	}
	var outs []out
	slotBytes := 0
	for _, o := range md.GetOutputs() {
		size := elementSize(o.GetDatatype())
		for i, d := range o.GetShape() {
			if i == 0 && d == -1 && len(req.GetInputs()[0].GetShape()) > 0 {
				d = req.GetInputs()[0].GetShape()[0] // the batch axis
			}
			size *= int(d)
		}
		if size <= 0 {
			continue // a dynamic dim: its size is unknown until the answer
		}
		outs = append(outs, out{o.GetName(), size})
		slotBytes += size
	}
	r := &sharedRegion{name: fmt.Sprintf("voxbench-%d", os.Getpid())}
	r.path = filepath.Join("/dev/shm", r.name)
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	total := len(data) + slots*slotBytes
	err = f.Truncate(int64(total))
	if err == nil {
		_, err = f.WriteAt(data, 0)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_, err = kc.SystemSharedMemoryRegister(ctx, &kpb.SystemSharedMemoryRegisterRequest{Name: r.name, Key: "/" + r.name, ByteSize: uint64(total)})
	}
	if err != nil {
		_ = os.Remove(r.path)
		return nil, err
	}
	base := proto.Clone(req).(*kpb.ModelInferRequest)
	base.RawInputContents = nil
	base.Inputs[0].Parameters = shmParams(r.name, len(data), 0)
	if len(outs) == 0 {
		r.reqs = []*kpb.ModelInferRequest{base}
		return r, nil
	}
	for k := 0; k < slots; k++ {
		rq := proto.Clone(base).(*kpb.ModelInferRequest)
		off := len(data) + k*slotBytes
		for _, o := range outs {
			rq.Outputs = append(rq.Outputs, &kpb.ModelInferRequest_InferRequestedOutputTensor{Name: o.name, Parameters: shmParams(r.name, o.size, off)})
			off += o.size
		}
		r.reqs = append(r.reqs, rq)
	}
	return r, nil
}

// close unregisters the region and removes its object.
func (r *sharedRegion) close(ctx context.Context, kc kpb.GRPCInferenceServiceClient) {
	_, _ = kc.SystemSharedMemoryUnregister(ctx, &kpb.SystemSharedMemoryUnregisterRequest{Name: r.name})
	_ = os.Remove(r.path)
}
