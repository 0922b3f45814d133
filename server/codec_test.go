package server

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

func codecSeeds() []proto.Message {
	return []proto.Message{
		&pb.InferRequest{Model: "ich", Version: "1", Priority: pb.Priority_PRIORITY_STAT, RequestId: "r",
			Input:   &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: [][]byte{[]byte("DICM-a"), {}, []byte("b")}}},
			Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_FINDINGS, pb.OutputKind_OUTPUT_KIND_DICOM_SEG}, SegOmitEmptyFrames: true},
		&pb.InferRequest{Model: "m", Input: &pb.InferRequest_Tensors{Tensors: &pb.TensorInput{Tensors: []*pb.Tensor{
			{Name: "x", DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: []int64{1, 2}, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}}, {Name: "y"}}}}},
		&pb.InferRequest{Model: "v", Input: &pb.InferRequest_Volume{Volume: &pb.Volume{DataType: pb.DataType_DATA_TYPE_INT16, Dims: []int64{1, 1, 2},
			Geometry: &pb.Geometry{Spacing: []float64{1, 2, 3}}, Data: []byte{9, 9, 9, 9}, Modality: "CT"}}},
		&pb.InferStreamRequest{Part: &pb.InferStreamRequest_Header{Header: &pb.InferRequest{Model: "h"}}},
		&pb.InferStreamRequest{Part: &pb.InferStreamRequest_Instances{Instances: &pb.DicomInput{Instances: [][]byte{[]byte("x")}}}},
		&kpb.ModelInferRequest{ModelName: "affine", Id: "7", Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}}},
			RawInputContents: [][]byte{{1, 2, 3, 4}},
			Parameters:       map[string]*kpb.InferParameter{"priority": {ParameterChoice: &kpb.InferParameter_Uint64Param{Uint64Param: 1}}}},
	}
}

// The aliasing decoder gives exactly what protobuf gives, and its bytes
// fields point into the buffer it was given.
func TestCodecMatchesProtobuf(t *testing.T) {
	for _, m := range codecSeeds() {
		b, err := proto.Marshal(m)
		require.NoError(t, err)
		got := m.ProtoReflect().New().Interface()
		require.NoError(t, unmarshalAliased(b, got))
		assert.True(t, proto.Equal(m, got), "%v\n%v", m, got)
	}
	req := codecSeeds()[0].(*pb.InferRequest)
	b, _ := proto.Marshal(req)
	got := &pb.InferRequest{}
	require.NoError(t, unmarshalAliased(b, got))
	inst := got.GetDicom().GetInstances()[0]
	for i := range b {
		b[i] = 'Z'
	}
	assert.Equal(t, "ZZZZZZ", string(inst), "aliases the buffer: no copy")
}

// FuzzCodec: on any bytes the aliasing decoder agrees with protobuf: both
// fail, or both succeed with equal messages.
func FuzzCodec(f *testing.F) {
	for _, m := range codecSeeds() {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, m := range []proto.Message{&pb.InferRequest{}, &pb.InferStreamRequest{}, &kpb.ModelInferRequest{}} {
			want := m.ProtoReflect().New().Interface()
			wantErr := proto.Unmarshal(b, want)
			got := m.ProtoReflect().New().Interface()
			gotErr := unmarshalAliased(append([]byte(nil), b...), got)
			if (wantErr == nil) != (gotErr == nil) {
				t.Fatalf("%T: protobuf says %v, ours %v", m, wantErr, gotErr)
			}
			if wantErr == nil && !proto.Equal(want, got) {
				t.Fatalf("%T: differs:\n%v\n%v", m, want, got)
			}
		}
	})
}

// BenchmarkDecodeStudy decodes a request carrying a 300-instance CT study
// (512x512 int16 slices: 157 MB) with protobuf and with the aliasing
// decoder (which the server runs after one copy of its own; protobuf's
// path makes that copy too).
func BenchmarkDecodeStudy(b *testing.B) {
	inst := make([][]byte, 300)
	for i := range inst {
		inst[i] = make([]byte, 512*512*2+1024)
	}
	msg, err := proto.Marshal(&pb.InferRequest{Model: "ich", Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: inst}}})
	require.NoError(b, err)
	b.Run("protobuf", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(msg, &pb.InferRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("aliased", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		for b.Loop() {
			if err := unmarshalAliased(msg, &pb.InferRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
