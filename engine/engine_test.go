package engine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/internal/onnxbuild"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/tensor"
)

func TestMain(m *testing.M) {
	if err := Init(""); err != nil {
		// The suite needs the real ONNX Runtime; `make test` installs it.
		os.Stderr.WriteString("engine tests: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func codeOf(err error) codes.Code { return status.Code(err) }

func TestFindLibrary(t *testing.T) {
	_, err := FindLibrary("/nonexistent/libonnxruntime.so.1")
	assert.ErrorContains(t, err, "no such file")
	t.Setenv(LibraryEnv, t.TempDir())
	_, err = FindLibrary("")
	assert.ErrorContains(t, err, "is a folder")
	t.Setenv(LibraryEnv, "")
	p, err := FindLibrary("")
	require.NoError(t, err)
	assert.True(t, strings.HasSuffix(p, filepath.Join(".deps", "onnxruntime", libName)), p)
}

func TestAffineInference(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, testrepo.Affine()), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	defer done()
	assert.Equal(t, "cpu", m.Provider())

	x := []float32{0, 1, 2, 3, 4, 5, -1, -2, -3, -4, -5, -6}
	outs, tm, err := m.Infer(context.Background(), []*tensor.Tensor{tensor.FromFloat32("", []int64{2, 2, 3}, x)})
	require.NoError(t, err)
	require.Len(t, outs, 1)
	assert.Equal(t, "y", outs[0].Name)
	assert.Equal(t, []int64{2, 2, 3}, outs[0].Shape)
	y, err := outs[0].Float32s()
	require.NoError(t, err)
	for i := range x {
		assert.InDelta(t, 2*x[i]+1, y[i], 1e-6)
	}
	assert.Positive(t, tm.Compute)
}

func TestHyperdensityMatchesFormula(t *testing.T) {
	r := NewRegistry("../models", quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("hyperdensity", "1")
	require.NoError(t, err)
	defer done()
	hu := []float32{-1000, 0, 40, 60, 65, 80, 1000, 30}
	outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{tensor.FromFloat32("image", []int64{1, 1, 2, 2, 2}, hu)})
	require.NoError(t, err)
	p, _ := outs[0].Float32s()
	best := 0.0
	for i, x := range hu {
		want := 1 / (1 + math.Exp(-(float64(x)-60)/5))
		assert.InDelta(t, want, p[i], 1e-6, "voxel %d (%g HU)", i, x)
		best = math.Max(best, want)
	}
	s, _ := outs[1].Float32s()
	assert.Equal(t, []int64{1, 1}, outs[1].Shape)
	assert.InDelta(t, best, s[0], 1e-6)
}

func TestDemoModelIsReproducible(t *testing.T) {
	committed, err := os.ReadFile("../models/hyperdensity/1/model.onnx")
	require.NoError(t, err)
	assert.True(t, bytes.Equal(committed, onnxbuild.Hyperdensity(60, 5).Marshal()),
		"models/hyperdensity/1/model.onnx differs from scripts/gen-demo-model's output: run make models-demo")
	f, err := os.Open("../examples/hyperdensity-phantom.npy")
	require.NoError(t, err)
	defer f.Close()
	example, err := tensor.ReadNpy(f, 0)
	require.NoError(t, err)
	assert.Equal(t, onnxbuild.DemoPhantom().Data, example.Data, "examples/hyperdensity-phantom.npy is stale: run make models-demo")
}

func TestInputValidation(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, testrepo.Affine()), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	defer done()
	f32 := func(shape ...int64) *tensor.Tensor {
		n, _ := tensor.NumElements(shape)
		return tensor.FromFloat32("x", shape, make([]float32, n))
	}
	tests := []struct {
		name   string
		inputs []*tensor.Tensor
		want   string
	}{
		{"none", nil, `no input tensors; model "affine" takes "x" float32[?,2,3]`},
		{"wrong dtype", []*tensor.Tensor{{Name: "x", DType: tensor.Int16, Shape: []int64{1, 2, 3}, Data: make([]byte, 12)}},
			`input "x": data type is int16, model expects float32`},
		{"unset dtype", []*tensor.Tensor{{Name: "x", Shape: []int64{1, 2, 3}, Data: make([]byte, 24)}},
			`data type is unset`},
		{"wrong rank", []*tensor.Tensor{f32(2, 3)}, `shape [2,3] has 2 axes, model expects 3: [?,2,3]`},
		{"wrong dim", []*tensor.Tensor{f32(1, 3, 3)}, `shape [1,3,3]: axis 1 is 3, model expects [?,2,3]`},
		{"zero batch", []*tensor.Tensor{{Name: "x", DType: tensor.Float32, Shape: []int64{0, 2, 3}}}, `axis 0 is 0, must be > 0`},
		{"batch too big", []*tensor.Tensor{f32(5, 2, 3)}, `batch of 5 exceeds max_batch_size 4`},
		{"empty data", []*tensor.Tensor{{Name: "x", DType: tensor.Float32, Shape: []int64{1, 2, 3}}}, `data is empty`},
		{"length mismatch", []*tensor.Tensor{{Name: "x", DType: tensor.Float32, Shape: []int64{1, 2, 3}, Data: make([]byte, 20)}},
			`data is 20 bytes but shape [1 2 3] of float32 needs 24`},
		{"unknown name", []*tensor.Tensor{f32(1, 2, 3), {Name: "z", DType: tensor.Float32, Shape: []int64{1}, Data: make([]byte, 4)}},
			`unknown input "z"`},
		{"missing name", []*tensor.Tensor{{Name: "q", DType: tensor.Float32, Shape: []int64{1, 2, 3}, Data: make([]byte, 24)}},
			`missing input "x"`},
		{"duplicate", []*tensor.Tensor{f32(1, 2, 3), f32(1, 2, 3)}, `input "x" given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := m.Infer(context.Background(), tt.inputs)
			require.Error(t, err)
			assert.Equal(t, codes.InvalidArgument, codeOf(err), err)
			assert.Contains(t, status.Convert(err).Message(), tt.want)
		})
	}
}

func TestGraphMustMatchDeclaration(t *testing.T) {
	onnx := onnxbuild.Affine([]int64{2, 3}, 2, 1).Marshal()
	tests := []struct {
		name string
		edit func(string) string
		want string
	}{
		{"input name", func(s string) string { return strings.Replace(s, "  - name: x", "  - name: image", 1) },
			`inputs[0].name: "image" is not a graph input (graph has "x")`},
		{"output name", func(s string) string { return strings.Replace(s, "  - name: y", "  - name: out", 1) },
			`outputs[0].name: "out" is not a graph output`},
		{"dtype", func(s string) string { return strings.Replace(s, "data_type: float32", "data_type: int16", 1) },
			`inputs[0].data_type: declared int16, graph has`},
		{"dims", func(s string) string { return strings.Replace(s, "dims: [2, 3]", "dims: [2, 4]", 1) },
			`inputs[0].dims: axis 2 declared 4, graph has 3`},
		{"rank", func(s string) string { return strings.Replace(s, "dims: [2, 3]", "dims: [6]", 1) },
			`inputs[0].dims: declared [6] (with batch axis: [?,6]), graph has [?,2,3]`},
		{"no batch axis declared", func(s string) string { return strings.Replace(s, "max_batch_size: 4", "max_batch_size: 0", 1) },
			`inputs[0].dims: declared [2,3]`},
		{"dynamic declared, fixed in graph", func(s string) string { return strings.Replace(s, "dims: [2, 3]", "dims: [-1, 3]", 1) },
			`axis 1 declared dynamic (-1) but the graph fixes it at 2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			repo := testrepo.Write(t, testrepo.Bundle{Name: "affine", YAML: tt.edit(testrepo.AffineYAML), Versions: map[int64][]byte{1: onnx}})
			r := NewRegistry(repo, quietLog())
			_, err := r.Load("affine", nil)
			require.Error(t, err)
			assert.Equal(t, codes.InvalidArgument, codeOf(err))
			assert.Contains(t, err.Error(), filepath.Join("affine", "1", "model.onnx"))
			assert.Contains(t, err.Error(), tt.want)
			assert.Empty(t, r.Names())

			_, err = Validate(filepath.Join(repo, "affine"))
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestBadBundlesAreSkipped(t *testing.T) {
	corrupt := testrepo.Bundle{Name: "corrupt", YAML: strings.Replace(testrepo.AffineYAML, "name: affine", "name: corrupt", 1),
		Versions: map[int64][]byte{1: []byte("this is not an onnx file")}}
	badYAML := testrepo.Bundle{Name: "badyaml", YAML: "name: badyaml\nbogus: 1\n", Versions: map[int64][]byte{1: nil}}
	repo := testrepo.Write(t, testrepo.Affine(), corrupt, badYAML, testrepo.Hyperdensity())
	r := NewRegistry(repo, quietLog())
	err := r.LoadAll()
	require.Error(t, err)
	assert.Contains(t, err.Error(), filepath.Join("corrupt", "1", "model.onnx")+": not a loadable ONNX model")
	assert.Contains(t, err.Error(), "field bogus not found")
	assert.Equal(t, []string{"affine", "hyperdensity"}, r.Names())
}

func TestVersionsLoadUnloadAndRollback(t *testing.T) {
	b := testrepo.Affine()
	b.Versions[2] = onnxbuild.Affine([]int64{2, 3}, 3, 0).Marshal()
	r := NewRegistry(testrepo.Write(t, b), quietLog())
	changes := 0
	r.OnChange(func() { changes++ })

	_, err := r.Load("affine", nil) // version policy: latest 1
	require.NoError(t, err)
	run := func(version string) float32 {
		m, done, err := r.Acquire("affine", version)
		require.NoError(t, err)
		defer done()
		outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{tensor.FromFloat32("x", []int64{1, 2, 3}, []float32{1, 1, 1, 1, 1, 1})})
		require.NoError(t, err)
		v, _ := outs[0].Float32s()
		return v[0]
	}
	assert.Equal(t, float32(3), run("")) // version 2: 3x
	_, _, err = r.Acquire("affine", "1")
	assert.Equal(t, codes.NotFound, codeOf(err))

	_, err = r.Load("affine", []int64{1, 2})
	require.NoError(t, err)
	assert.Equal(t, float32(3), run("1"))
	assert.Equal(t, float32(3), run("2"))
	assert.Equal(t, float32(3), run(""))

	// Rollback: serve version 1 only.
	_, err = r.Load("affine", []int64{1})
	require.NoError(t, err)
	assert.Equal(t, float32(3), run(""))
	_, _, err = r.Acquire("affine", "2")
	assert.Equal(t, codes.NotFound, codeOf(err))

	_, err = r.Load("affine", []int64{9})
	assert.Equal(t, codes.NotFound, codeOf(err))
	_, err = r.Load("nope", nil)
	assert.Equal(t, codes.NotFound, codeOf(err))
	_, err = r.Load("../etc", nil)
	assert.Equal(t, codes.InvalidArgument, codeOf(err))

	gone, err := r.Unload("affine", 0)
	require.NoError(t, err)
	assert.Equal(t, []int64{1}, gone)
	_, _, err = r.Acquire("affine", "")
	assert.Equal(t, codes.NotFound, codeOf(err))
	_, err = r.Unload("affine", 0)
	assert.Equal(t, codes.NotFound, codeOf(err))
	assert.Equal(t, 4, changes)

	_, _, err = r.Acquire("affine", "x")
	assert.Equal(t, codes.InvalidArgument, codeOf(err))
}

// busy returns a slow-model input that keeps an instance busy for a while.
func busy(n int64) *tensor.Tensor {
	v := make([]float32, n*n)
	for i := range v {
		v[i] = 0.001
	}
	return tensor.FromFloat32("x", []int64{1, n, n}, v)
}

func TestQueueFullAndDeadlines(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, testrepo.Slow(40)), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("slow", "")
	require.NoError(t, err)
	defer done()

	// Hold the only instance, then fill the queue (max_queue_size 2).
	finish := occupy(t, m)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := m.Infer(ctx, []*tensor.Tensor{busy(8)})
			errs <- err
		}()
	}
	require.Eventually(t, func() bool { return m.Queued() == 2 }, 5*time.Second, time.Millisecond)

	_, _, err = m.Infer(context.Background(), []*tensor.Tensor{busy(8)})
	assert.Equal(t, codes.ResourceExhausted, codeOf(err))
	assert.Contains(t, err.Error(), "max_queue_size 2")

	// A cancelled client frees its place.
	cancel()
	wg.Wait()
	for i := 0; i < 2; i++ {
		assert.Equal(t, codes.Canceled, codeOf(<-errs))
	}
	assert.Zero(t, m.Queued())

	// A deadline that passes in the queue.
	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	_, _, err = m.Infer(dctx, []*tensor.Tensor{busy(8)})
	assert.Equal(t, codes.DeadlineExceeded, codeOf(err))

	finish()
	_, _, err = m.Infer(context.Background(), []*tensor.Tensor{busy(8)})
	assert.NoError(t, err)
}

// The bundle's default timeout applies when the client sets none: REJECT
// fails the request, DELAY keeps it waiting.
func TestDefaultQueueTimeout(t *testing.T) {
	for _, action := range []string{"REJECT", "DELAY"} {
		t.Run(action, func(t *testing.T) {
			b := testrepo.Slow(40)
			b.YAML = strings.Replace(b.YAML, "max_queue_size: 2\n", "max_queue_size: 2\n  default_timeout_microseconds: 10000\n  timeout_action: "+action+"\n", 1)
			r := NewRegistry(testrepo.Write(t, b), quietLog())
			require.NoError(t, r.LoadAll())
			m, done, err := r.Acquire("slow", "")
			require.NoError(t, err)
			defer done()
			finish := occupy(t, m)
			errc := make(chan error, 1)
			go func() {
				_, _, err := m.Infer(context.Background(), []*tensor.Tensor{busy(8)})
				errc <- err
			}()
			if action == "REJECT" {
				err := <-errc
				assert.Equal(t, codes.DeadlineExceeded, codeOf(err))
				assert.Contains(t, err.Error(), "default_timeout_microseconds")
				finish()
				return
			}
			finish()
			assert.NoError(t, <-errc)
		})
	}
}

// occupy starts a long request on m's only instance and returns once it
// runs; finish waits for it to end.
func occupy(t *testing.T, m *Model) (finish func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, _, err := m.Infer(context.Background(), []*tensor.Tensor{busy(640)})
		done <- err
	}()
	require.Eventually(t, func() bool { return m.sched.running.Load() == 1 && m.Queued() == 0 }, 5*time.Second, time.Millisecond)
	return func() { require.NoError(t, <-done) }
}

func TestUnloadWaitsForInflight(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, testrepo.Slow(40)), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("slow", "")
	require.NoError(t, err)
	finished := make(chan error, 1)
	go func() {
		defer done()
		_, _, err := m.Infer(context.Background(), []*tensor.Tensor{busy(192)})
		finished <- err
	}()
	unloaded := make(chan struct{})
	go func() {
		_, err := r.Unload("slow", 0)
		assert.NoError(t, err)
		close(unloaded)
	}()
	// The request completes on its session; Unload returns only after it.
	require.NoError(t, <-finished)
	<-unloaded
	_, _, err = r.Acquire("slow", "")
	assert.Equal(t, codes.NotFound, codeOf(err))
}

func TestLoadUnloadUnderLoad(t *testing.T) {
	b := testrepo.Affine()
	b.Versions[2] = onnxbuild.Affine([]int64{2, 3}, 2, 1).Marshal()
	r := NewRegistry(testrepo.Write(t, b), quietLog())
	_, err := r.Load("affine", []int64{1, 2})
	require.NoError(t, err)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	failures := map[codes.Code]int{}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := tensor.FromFloat32("x", []int64{1, 2, 3}, []float32{1, 2, 3, 4, 5, 6})
			for {
				select {
				case <-stop:
					return
				default:
				}
				m, done, err := r.Acquire("affine", "")
				if err == nil {
					var outs []*tensor.Tensor
					outs, _, err = m.Infer(context.Background(), []*tensor.Tensor{x})
					done()
					if err == nil {
						v, _ := outs[0].Float32s()
						if v[5] != 13 {
							t.Errorf("wrong output %v", v)
						}
					}
				}
				if err != nil {
					mu.Lock()
					failures[codeOf(err)]++
					mu.Unlock()
				}
			}
		}()
	}
	// Switch versions back and forth: the model never disappears, so no
	// request may fail.
	for i := 0; i < 20; i++ {
		_, err := r.Load("affine", []int64{int64(1 + i%2)})
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	// Requests can only have waited in the queue (max_queue_size 4 with 8
	// clients) — never failed for the switch itself.
	for code, n := range failures {
		assert.Equal(t, codes.ResourceExhausted, code, "%d failures", n)
	}
	r.Close()
	assert.Empty(t, r.Names())
}

// A bundle that prefers CUDA runs on the CPU where the CUDA provider cannot
// load, and the reason is logged once for the process, not per model.
func TestCUDAFallsBackToCPUAndSaysSoOnce(t *testing.T) {
	a := testrepo.Affine()
	a.YAML += "execution:\n  providers: [tensorrt, cuda, cpu]\n  cuda: {device_id: 0, cudnn_conv_algo_search: EXHAUSTIVE, tf32: false}\n" +
		"  tensorrt: {fp16: true, engine_cache_path: /tmp/voxserve-trt, max_workspace_size: 1073741824}\n"
	b := testrepo.Affine()
	b.Name = "affine2"
	b.YAML = strings.Replace(a.YAML, "name: affine", "name: affine2", 1)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	unavailableOnce.Delete("cuda")
	unavailableOnce.Delete("tensorrt")
	r := NewRegistry(testrepo.Write(t, a, b), log)
	require.NoError(t, r.LoadAll())
	for _, name := range []string{"affine", "affine2"} {
		m, done, err := r.Acquire(name, "")
		require.NoError(t, err)
		if m.Provider() != "cpu" {
			done()
			t.Skipf("the %s provider loaded: this machine has a GPU", m.Provider())
		}
		assert.Equal(t, "cpu", m.Provider())
		_, _, err = m.Infer(context.Background(), []*tensor.Tensor{tensor.FromFloat32("x", []int64{1, 2, 3}, make([]float32, 6))})
		assert.NoError(t, err)
		done()
	}
	// Once per provider, not per model.
	assert.Equal(t, 2, strings.Count(buf.String(), "execution provider unavailable"), buf.String())
	assert.Equal(t, 1, strings.Count(buf.String(), "provider=tensorrt"), buf.String())
}

// Out-of-memory errors from ONNX Runtime fail the request (or the load)
// with RESOURCE_EXHAUSTED; other failures stay INTERNAL or INVALID_ARGUMENT.
func TestOutOfMemoryIsResourceExhausted(t *testing.T) {
	for _, tc := range []struct {
		msg string
		oom bool
	}{
		{"[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory ; GPU=0", true},
		{"BFCArena::AllocateRawInternal Available memory of 0 is smaller than requested bytes of 268435456", true},
		{"Failed to allocate memory for requested buffer of size 1073741824", true},
		{"std::bad_alloc", true},
		{"CUBLAS_STATUS_ALLOC_FAILED", true},
		{"[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x", false},
	} {
		err := errors.New(tc.msg)
		assert.Equal(t, tc.oom, isOutOfMemory(err), tc.msg)
		want, wantLoad := codes.Internal, codes.InvalidArgument
		if tc.oom {
			want, wantLoad = codes.ResourceExhausted, codes.ResourceExhausted
		}
		assert.Equal(t, want, codeOf(runError("m:1", err)), tc.msg)
		assert.Equal(t, wantLoad, codeOf(loadError(err)), tc.msg)
		assert.Contains(t, runError("m:1", err).Error(), tc.msg)
	}
}

// CUDA's sticky errors, as ONNX Runtime's CUDA provider words them, mean
// the device is lost to the process; out of memory and bad input do not.
func TestDeviceLostIsRecognised(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		lost bool
	}{
		{"[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access was encountered ; GPU=0 ; hostname=x", true},
		{"CUDA error cudaErrorLaunchFailure:unspecified launch failure", true},
		{"CUDNN failure 4000: CUDNN_STATUS_INTERNAL_ERROR ; GPU=0 ; expr=cudaErrorIllegalAddress", true},
		{"CUDA failure 710: device-side assert triggered", true},
		{"CUDA failure 2: out of memory ; GPU=0", false},
		{"[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x", false},
	} {
		assert.Equal(t, tc.lost, isDeviceLost(errors.New(tc.msg)), tc.msg)
	}
	assert.False(t, isDeviceLost(nil))
}

// The registry passes a lost device on to its callback, naming the model.
func TestRegistryReportsDeviceLost(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, testrepo.Affine()), quietLog())
	defer r.Close()
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	defer done()
	var got []string
	r.OnDeviceLost(func(model string, err error) { got = append(got, model+": "+err.Error()) })
	m.lost(errors.New("an illegal memory access was encountered"))
	assert.Equal(t, []string{"affine:1: an illegal memory access was encountered"}, got)
}
