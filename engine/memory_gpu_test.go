//go:build cuda

package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/voxserve/voxserve/kernels/cuda"
	"github.com/voxserve/voxserve/tensor"
)

// TestLoadUnloadCyclesReturnDeviceMemory: 50 load / infer / unload cycles
// of a reference bundle on ONNX Runtime's CUDA provider leave the device's
// free memory (the driver's cuMemGetInfo) where it was after warm-up.
// Skips without a device or without the CUDA provider libraries, unless
// VOXSERVE_REQUIRE_GPU=1 (scripts/gpu-e2e.sh sets it).
func TestLoadUnloadCyclesReturnDeviceMemory(t *testing.T) {
	mustHave := os.Getenv("VOXSERVE_REQUIRE_GPU") != ""
	skip := func(format string, args ...any) {
		if mustHave {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	src := filepath.Join("..", "models", "pneumothorax")
	if _, err := os.Stat(filepath.Join(src, "1", "model.onnx")); err != nil {
		skip("models/pneumothorax not trained")
	}
	if err := cuda.Load(); err != nil {
		skip("no CUDA driver: %v", err)
	}
	dev, err := cuda.Open(0)
	if err != nil {
		skip("no GPU: %v", err)
	}
	defer dev.Close()

	r := NewRegistry(cudaRepo(t, src, "", false), quietLog())
	defer r.Close()
	if _, err := r.Load("pneumothorax", nil); err != nil {
		skip("the CUDA provider does not load here: %v", err)
	}
	_, err = r.Unload("pneumothorax", 0)
	mustT(t, err)

	free := func() uint64 {
		f, _, err := dev.MemInfo()
		mustT(t, err)
		return f
	}
	cycleModel(t, r, 5)
	before := free()
	cycleModel(t, r, 50)
	after := free()
	t.Logf("device free memory: %.1f MiB after warm-up, %.1f MiB after 50 more cycles", float64(before)/(1<<20), float64(after)/(1<<20))
	assert.LessOrEqual(t, int64(before)-int64(after), int64(64<<20), "device memory lost over 50 cycles")
}

// TestCUDAOutOfMemoryFailsTheRequest: a bundle whose CUDA arena may not
// grow past 1 MiB runs out of device memory on its first batch; that
// request fails RESOURCE_EXHAUSTED and the model stays loaded.
func TestCUDAOutOfMemoryFailsTheRequest(t *testing.T) {
	mustHave := os.Getenv("VOXSERVE_REQUIRE_GPU") != ""
	src := filepath.Join("..", "models", "pneumothorax")
	if _, err := os.Stat(filepath.Join(src, "1", "model.onnx")); err != nil || cuda.Load() != nil {
		if mustHave {
			t.Fatal("needs models/pneumothorax and a CUDA driver")
		}
		t.Skip("needs models/pneumothorax and a CUDA driver")
	}
	r := NewRegistry(cudaRepo(t, src, "  cuda: {gpu_mem_limit: 1048576}\n", false), quietLog())
	defer r.Close()
	if _, err := r.Load("pneumothorax", nil); err != nil {
		if codeOf(err) == codes.ResourceExhausted {
			return // the weights alone did not fit: the load failed cleanly
		}
		if mustHave {
			t.Fatalf("loading on the CUDA provider: %v", err)
		}
		t.Skipf("the CUDA provider does not load here: %v", err)
	}
	m, done, err := r.Acquire("pneumothorax", "")
	mustT(t, err)
	defer done()
	x := tensor.FromFloat32("image", []int64{8, 1, 256, 256}, make([]float32, 8*256*256))
	_, _, err = m.Infer(context.Background(), []*tensor.Tensor{x})
	assert.Equal(t, codes.ResourceExhausted, codeOf(err), "%v", err)
	assert.Contains(t, r.Names(), "pneumothorax", "the model stays loaded")

	// With its warm-up (a batch of 32), the same bundle fails its load
	// instead: RESOURCE_EXHAUSTED, naming the warm-up.
	warm := NewRegistry(cudaRepo(t, src, "  cuda: {gpu_mem_limit: 1048576}\n", true), quietLog())
	defer warm.Close()
	_, err = warm.Load("pneumothorax", nil)
	assert.Equal(t, codes.ResourceExhausted, codeOf(err), "%v", err)
	assert.ErrorContains(t, err, "model_warmup[")
}

// cudaRepo is a repository holding the bundle at src (its model linked)
// asking for the CUDA provider only, with extra execution options, and
// without its model_warmup unless warm: these tests count on what the
// requests they send do.
func cudaRepo(t *testing.T, src, extra string, warm bool) string {
	repo := t.TempDir()
	dst := filepath.Join(repo, filepath.Base(src))
	mustT(t, os.MkdirAll(filepath.Join(dst, "1"), 0o755))
	y, err := os.ReadFile(filepath.Join(src, "bundle.yaml"))
	mustT(t, err)
	yaml := string(y)
	if !warm {
		yaml = dropWarmup(yaml)
	}
	yaml = strings.Replace(yaml, "\nprovenance:", "\nexecution:\n  providers: [cuda]\n"+extra+"provenance:", 1)
	mustT(t, os.WriteFile(filepath.Join(dst, "bundle.yaml"), []byte(yaml), 0o644))
	abs, _ := filepath.Abs(filepath.Join(src, "1", "model.onnx"))
	mustT(t, os.Symlink(abs, filepath.Join(dst, "1", "model.onnx")))
	return repo
}

func mustT(t *testing.T, err error) {
	t.Helper()
	require.NoError(t, err)
}

// TestDeviceBoundIOMatchesCPU: each reference bundle on the CUDA provider
// with its inputs and outputs bound to device memory gives the CPU
// provider's outputs, to within float32 rounding of different summation
// orders (TF32 off). The batch is uploaded into the bound device buffer by
// the instance's stream and read back from the bound output buffer.
func TestDeviceBoundIOMatchesCPU(t *testing.T) {
	mustHave := os.Getenv("VOXSERVE_REQUIRE_GPU") != ""
	if err := cuda.Load(); err != nil {
		if mustHave {
			t.Fatalf("no CUDA driver: %v", err)
		}
		t.Skipf("no CUDA driver: %v", err)
	}
	cpu := NewRegistry("../models", quietLog())
	defer cpu.Close()
	for _, name := range []string{"ich", "pneumothorax", "psoas"} {
		t.Run(name, func(t *testing.T) {
			src := filepath.Join("..", "models", name)
			r := NewRegistry(cudaRepo(t, src, "  io_binding: on\n  cuda: {tf32: false}\n", false), quietLog())
			defer r.Close()
			if _, err := r.Load(name, nil); err != nil {
				if mustHave {
					t.Fatalf("loading on the CUDA provider: %v", err)
				}
				t.Skipf("the CUDA provider does not load here: %v", err)
			}
			_, err := cpu.Load(name, nil)
			mustT(t, err)
			gm, gdone, err := r.Acquire(name, "")
			mustT(t, err)
			defer gdone()
			cm, cdone, err := cpu.Acquire(name, "")
			mustT(t, err)
			defer cdone()
			assert.Equal(t, "cuda", gm.Provider())
			assert.True(t, strings.HasPrefix(gm.IOBinding(), "device memory (cuda:0"), gm.IOBinding())

			for _, n := range []int64{1, 5} {
				shape := append([]int64{n}, gm.Spec.Inputs[0].Dims...)
				count, err := tensor.NumElements(shape)
				mustT(t, err)
				v := make([]float32, count)
				for i := range v {
					v[i] = float32(math.Sin(float64(i)*0.37+float64(n))) * 2
				}
				in := tensor.FromFloat32(gm.Spec.Inputs[0].Name, shape, v)
				want, _, err := cm.Infer(context.Background(), []*tensor.Tensor{in})
				mustT(t, err)
				got, _, err := gm.Infer(context.Background(), []*tensor.Tensor{in})
				mustT(t, err)
				for i := range want {
					w, _ := want[i].Float32s()
					g, _ := got[i].Float32s()
					require.Equal(t, want[i].Shape, got[i].Shape)
					worst := 0.0
					for j := range w {
						d := math.Abs(float64(w[j]-g[j])) / (1 + math.Abs(float64(w[j])))
						worst = max(worst, d)
					}
					t.Logf("%s batch %d: largest difference %.2g (relative to 1+|cpu|)", want[i].Name, n, worst)
					assert.LessOrEqual(t, worst, 1e-3, "%s batch %d", want[i].Name, n)
				}
			}
		})
	}
}
