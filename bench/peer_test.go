package bench

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/voxserve/voxserve/phantom"
	pb "github.com/voxserve/voxserve/proto/voxserve/v1"
)

// The Python peer of bench/peer_vs_voxserve.sh still answers: a small head
// CT phantom gets a finding and a volume from it, so the comparison does
// not rot between benchmark runs.
func TestPythonPeerAnswers(t *testing.T) {
	py, _ := filepath.Abs("../.venv/bin/python")
	if _, err := os.Stat(py); err != nil || exec.Command(py, "-c", "import onnxruntime, yaml, scipy, pydicom").Run() != nil {
		if os.Getenv("VOXSERVE_REQUIRE_PYTHON") != "" {
			t.Fatal("the .venv lacks the peer's packages; run make venv")
		}
		t.Skip("no .venv with the peer's packages")
	}
	if _, err := os.Stat("../models/ich/1/model.onnx"); err != nil {
		t.Skip("models/ich not trained")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	lis.Close()
	cmd := exec.Command(py, "peer/peer_server.py", addr, "../models/ich")
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	pos := true
	c, err := phantom.Generate(phantom.HeadCT, phantom.Options{Seed: 300001, Matrix: 128, SliceThickness: 5, Positive: &pos})
	require.NoError(t, err)
	files, err := c.Series.Encode()
	require.NoError(t, err)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var resp *pb.InferResponse
	require.Eventually(t, func() bool { // the peer takes a few seconds to start
		resp, err = pb.NewInferenceClient(conn).Infer(ctx, &pb.InferRequest{Model: "ich",
			Input: &pb.InferRequest_Dicom{Dicom: &pb.DicomInput{Instances: files}}})
		return err == nil
	}, 45*time.Second, 500*time.Millisecond, "last error: %v", err)
	require.Len(t, resp.GetFindings(), 1)
	assert.Greater(t, resp.GetFindings()[0].GetProbability(), 0.5)
	require.Len(t, resp.GetMeasurements(), 1)
	assert.Greater(t, resp.GetMeasurements()[0].GetValue(), 0.0)
}
