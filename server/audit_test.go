package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/audit"
	"github.com/voxserve/voxserve/internal/testrepo"
	kpb "github.com/voxserve/voxserve/proto/inference"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// inputHash is the audit log's input hash, computed independently.
func inputHash(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		s := sha256.Sum256(p)
		h.Write(s[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestAuditLog: a real server with an access file writes what the audit
// log promises, for both APIs, streams, administration and refusals, and
// the chain verifies.
func TestAuditLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	log, err := audit.Open(path)
	require.NoError(t, err)
	s := startSecuredWith(t, testrepo.Write(t, testrepo.Affine()), Options{Audit: log})
	cc := s.dial(t, "unknown.example")
	client := pb.NewInferenceClient(cc)
	x := f32bytes(1, 2, 3, 4, 5, 6)

	// 1. Inference.
	_, err = client.Infer(withToken(t, inferToken), &pb.InferRequest{Model: "affine", RequestId: "r1",
		Input:   &pb.InferRequest_Tensors{Tensors: &pb.TensorInput{Tensors: []*pb.Tensor{{Name: "x", DataType: pb.DataType_DATA_TYPE_FLOAT32, Shape: []int64{1, 2, 3}, Data: x}}}},
		Outputs: []pb.OutputKind{pb.OutputKind_OUTPUT_KIND_TENSORS}})
	require.NoError(t, err)
	// 2. A refused administration.
	_, err = client.UnloadModel(withToken(t, inferToken), &pb.UnloadModelRequest{Name: "affine"})
	require.Error(t, err)
	// 3. No credentials.
	_, err = client.Infer(ctxT(t), &pb.InferRequest{Model: "affine"})
	require.Error(t, err)
	// Not recorded: a listing.
	_, err = client.ListModels(withToken(t, inferToken), &pb.ListModelsRequest{})
	require.NoError(t, err)
	// 4. A stream of instances (not DICOM: the call fails, and is still recorded).
	st, err := client.InferStream(withToken(t, inferToken))
	require.NoError(t, err)
	require.NoError(t, st.Send(&pb.InferStreamRequest{Part: &pb.InferStreamRequest_Header{Header: &pb.InferRequest{Model: "affine", RequestId: "s1"}}}))
	for _, b := range []string{"first", "second"} {
		require.NoError(t, st.Send(&pb.InferStreamRequest{Part: &pb.InferStreamRequest_Instances{Instances: &pb.DicomInput{Instances: [][]byte{[]byte(b)}}}}))
	}
	_, err = st.CloseAndRecv()
	require.Error(t, err)
	// 5. KServe.
	_, err = kpb.NewGRPCInferenceServiceClient(cc).ModelInfer(withToken(t, inferToken), &kpb.ModelInferRequest{ModelName: "affine", Id: "k1",
		Inputs: []*kpb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2, 3}}}, RawInputContents: [][]byte{x}})
	require.NoError(t, err)
	// 6. Administration.
	_, err = client.LoadModel(withToken(t, adminToken), &pb.LoadModelRequest{Name: "affine"})
	require.NoError(t, err)

	s.stop()
	require.NoError(t, log.Close())
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	sum, err := audit.Verify(f)
	require.NoError(t, err)
	assert.Equal(t, 6, sum.Records)

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	byMethod := map[string]audit.Record{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r struct {
			audit.Record
			Hash string `json:"hash"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &r))
		byMethod[r.Method+" "+r.Code] = r.Record
	}
	infer := byMethod["/voxserve.v1.Inference/Infer OK"]
	assert.Equal(t, "pacs-router", infer.Principal)
	assert.Equal(t, "affine", infer.Model)
	assert.Equal(t, "1", infer.Version)
	assert.Equal(t, "r1", infer.RequestID)
	assert.Equal(t, &audit.Input{SHA256: inputHash(x), Parts: 1, Bytes: 24}, infer.Input)
	assert.Equal(t, []string{"tensor:y"}, infer.Result.Outputs)
	assert.NotNil(t, infer.TimingsMs)
	assert.NotEmpty(t, infer.Peer)

	denied := byMethod["/voxserve.v1.Inference/UnloadModel PermissionDenied"]
	assert.Equal(t, "pacs-router", denied.Principal)
	assert.Contains(t, denied.Error, "needs admin")
	assert.Nil(t, denied.Input)

	anonymous := byMethod["/voxserve.v1.Inference/Infer Unauthenticated"]
	assert.Empty(t, anonymous.Principal)
	assert.Nil(t, anonymous.Input, "a refused call's input is not hashed")

	stream := byMethod["/voxserve.v1.Inference/InferStream InvalidArgument"]
	assert.Equal(t, "s1", stream.RequestID)
	assert.Equal(t, &audit.Input{SHA256: inputHash([]byte("first"), []byte("second")), Parts: 2, Bytes: 11}, stream.Input)

	k := byMethod["/inference.GRPCInferenceService/ModelInfer OK"]
	assert.Equal(t, "k1", k.RequestID)
	assert.Equal(t, inputHash(x), k.Input.SHA256)
	assert.Equal(t, []string{"y"}, k.Result.Outputs)

	load := byMethod["/voxserve.v1.Inference/LoadModel OK"]
	assert.Equal(t, "mlops", load.Principal)
	assert.Equal(t, "affine", load.Model)

	for _, secret := range []string{inferToken, adminToken, "first", "second"} {
		assert.NotContains(t, string(b), secret, "no tokens or input in the log")
	}
}
