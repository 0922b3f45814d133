package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/bench"
	"github.com/voxserve/voxserve/internal/testrepo"
)

func runVoxbench(t *testing.T, args ...string) int {
	t.Helper()
	old := os.Args
	defer func() { os.Args = old }()
	os.Args = append([]string{"voxbench"}, args...)
	return run()
}

// A KServe sweep with the tensors in shared memory, in process: every
// request succeeds, the queue and compute split comes from the server's
// statistics, and the region is gone afterwards.
func TestKServeSharedMemorySweep(t *testing.T) {
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		t.Skip("no /dev/shm")
	}
	repo := testrepo.Write(t, testrepo.Affine())
	out := t.TempDir()
	code := runVoxbench(t, "--model-repository", repo, "--model", "affine", "--protocol", "kserve", "--shared-memory",
		"--concurrency", "1,3", "--duration", "300ms", "--warmup", "50ms", "--quiet", "--out", out)
	require.Equal(t, 0, code)
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	require.NoError(t, err)
	var rep bench.Report
	require.NoError(t, json.Unmarshal(b, &rep))
	require.Len(t, rep.Steps, 2)
	for _, s := range rep.Steps {
		assert.Positive(t, s.Requests)
		assert.Zero(t, s.Errors, s.FirstError)
		assert.Positive(t, s.MeanComputeMs, "split from ModelStatistics")
	}
	_, err = os.Stat(filepath.Join("/dev/shm", fmt.Sprintf("voxbench-%d", os.Getpid())))
	assert.True(t, os.IsNotExist(err), "the region's object is removed")

	assert.Equal(t, 2, runVoxbench(t, "--model-repository", repo, "--model", "affine", "--shared-memory", "--quiet"),
		"--shared-memory needs --protocol kserve")
}
