package engine

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/voxserve/voxserve/tensor"
)

// residentBytes is the process's resident set, after a GC that returns
// freed memory to the OS.
func residentBytes(t testing.TB) int64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skipf("no /proc/self/statm: %v", err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	require.NoError(t, err)
	return pages * int64(os.Getpagesize())
}

// cycleModel loads the pneumothorax reference bundle, runs one inference
// and unloads it, n times.
func cycleModel(t testing.TB, r *Registry, n int) {
	t.Helper()
	x := tensor.FromFloat32("image", []int64{1, 1, 256, 256}, make([]float32, 256*256))
	for i := 0; i < n; i++ {
		_, err := r.Load("pneumothorax", nil)
		require.NoError(t, err)
		m, done, err := r.Acquire("pneumothorax", "")
		require.NoError(t, err)
		_, _, err = m.Infer(context.Background(), []*tensor.Tensor{x})
		done()
		require.NoError(t, err)
		_, err = r.Unload("pneumothorax", 0)
		require.NoError(t, err)
	}
}

// TestLoadUnloadCyclesReturnMemory: 50 load / infer / unload cycles of a
// reference bundle leave the process's resident memory where it was after
// a few warm-up cycles (Triton #3320, #4966 and onnxruntime_backend #198:
// servers that grow with every reload). The device-memory version of this
// check is in memory_gpu_test.go. make test runs it on its own, after the
// other packages: beside them, glibc may open another malloc arena for
// the busy ONNX Runtime threads, a step of 20-35 MiB, as large as the
// retained memory it looks for (30-36 MiB without malloc_trim).
func TestLoadUnloadCyclesReturnMemory(t *testing.T) {
	if _, err := os.Stat(filepath.Join("..", "models", "pneumothorax", "1", "model.onnx")); err != nil {
		t.Skip("models/pneumothorax not trained")
	}
	r := NewRegistry(filepath.Join("..", "models"), quietLog())
	defer r.Close()
	cycleModel(t, r, 5) // allocator pools and caches reach their size
	before := residentBytes(t)
	cycleModel(t, r, 50)
	after := residentBytes(t)
	t.Logf("resident memory after 5 warm-up cycles %.1f MiB, after 50 more %.1f MiB", float64(before)/(1<<20), float64(after)/(1<<20))
	assert.Less(t, after-before, int64(16<<20), "resident memory grew by %.1f MiB over 50 cycles", float64(after-before)/(1<<20))
}
