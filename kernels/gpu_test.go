//go:build cuda

package kernels

import (
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// openGPU opens device 0, or skips where there is none; VOXSERVE_REQUIRE_GPU=1
// (set on GPU machines) turns the skip into a failure.
func openGPU(tb testing.TB) *GPU {
	tb.Helper()
	g, err := Open(0)
	if errors.Is(err, ErrUnavailable) && os.Getenv("VOXSERVE_REQUIRE_GPU") == "" {
		tb.Skipf("no GPU: %v", err)
	}
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, g.Close()) })
	free, total, err := g.Dev.MemInfo()
	require.NoError(tb, err)
	tb.Logf("%s, compute capability %d, %d SMs, %d of %d MiB free", g.Dev.Name, g.Dev.Capability, g.Dev.SMs, free>>20, total>>20)
	return g
}

// TestGPUMatchesCPU checks every kernel against the Go reference.
func TestGPUMatchesCPU(t *testing.T) {
	checkOps(t, openGPU(t), !testing.Short())
}

// TestGPUMemoryReturned opens and closes the kernels and runs operations
// many times: the device's free memory must come back.
func TestGPUMemoryReturned(t *testing.T) {
	g := openGPU(t)
	free0, _, err := g.Dev.MemInfo()
	require.NoError(t, err)
	for i := 0; i < 50; i++ {
		lab := make([]uint8, 64*64*64)
		lab[i] = 1
		_, err := g.RemoveSmallComponents(lab, [3]int{64, 64, 64}, 2)
		require.NoError(t, err)
	}
	free1, _, err := g.Dev.MemInfo()
	require.NoError(t, err)
	require.InDelta(t, float64(free0), float64(free1), 4<<20, "free memory before %d, after %d", free0, free1)
}
