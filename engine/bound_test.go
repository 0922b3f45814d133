package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/tensor"
)

// withIOBinding sets execution.io_binding in a bundle.yaml.
func withIOBinding(yaml, mode string) string {
	if strings.Contains(yaml, "\nexecution:\n") {
		return strings.Replace(yaml, "\nexecution:\n", "\nexecution:\n  io_binding: "+mode+"\n", 1)
	}
	return yaml + "execution:\n  io_binding: " + mode + "\n"
}

func TestIOBindingPlan(t *testing.T) {
	static := &bundle.Spec{Inputs: []bundle.Input{{Dims: []int64{1, 4}}}, Outputs: []bundle.Output{{Dims: []int64{2}}}}
	dynamic := &bundle.Spec{Inputs: []bundle.Input{{Dims: []int64{1, -1}}}}
	tests := []struct {
		mode, provider string
		spec           *bundle.Spec
		bound          bool
		why            string
	}{
		{"auto", "cpu", static, false, "the session runs on the CPU"},
		{"off", "cuda", static, false, "io_binding: off"},
		{"auto", "cuda", dynamic, false, "inputs[0].dims has a dynamic dim"},
		{"on", "cpu", static, true, ""},
		{"auto", "cuda", static, true, ""},
		{"auto", "tensorrt", static, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.mode+"/"+tt.provider, func(t *testing.T) {
			spec := *tt.spec
			spec.Execution.IOBinding = tt.mode
			newMem, why := ioBindingPlan(&spec, tt.provider)
			assert.Equal(t, tt.bound, newMem != nil)
			assert.Equal(t, tt.why, why)
		})
	}
}

// boundAffine loads the batching affine bundle with its inputs and
// outputs bound (host memory) over the given number of instances.
func boundAffine(t *testing.T, instances int) (*Registry, *Model, func()) {
	b := affineBatching("dynamic_batching:\n  max_queue_delay_microseconds: 20000\n")
	b.YAML = strings.Replace(b.YAML, "instance_count: 1\n", fmt.Sprintf("instance_count: %d\n", instances), 1)
	b.YAML = withIOBinding(b.YAML, "on")
	r := NewRegistry(testrepo.Write(t, b), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	return r, m, done
}

// Bound inputs and outputs give every request exactly its own rows back,
// batched across concurrent requests, over two instances.
func TestBoundIOBatches(t *testing.T) {
	r, m, done := boundAffine(t, 2)
	defer r.Close()
	assert.Equal(t, "host memory", m.IOBinding())

	const clients = 24
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for k := 0; k < 5; k++ {
				in := affineInput(float32(1000*c+10*k), int64(1+(c+k)%3))
				outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{in})
				if !assert.NoError(t, err) {
					return
				}
				x, _ := in.Float32s()
				y, _ := outs[0].Float32s()
				assert.Equal(t, in.Shape, outs[0].Shape)
				for i := range x {
					if !assert.Equal(t, 2*x[i]+1, y[i], "client %d request %d item %d", c, k, i) {
						return
					}
				}
			}
		}(c)
	}
	wg.Wait()
	st := m.Stats()
	assert.Equal(t, int64(clients*5), st.Success)
	assert.Less(t, st.Executions, int64(clients*5), "requests were batched: %v", st.BatchSizes)
	done()
	// Unloading frees the instances' buffers and bindings with the session.
	_, err := r.Unload("affine", 0)
	require.NoError(t, err)
}

// The reference models give bit-identical outputs with and without bound
// I/O: the same CPU kernels over the same batch, only the memory differs.
func TestBoundIOMatchesReferenceModels(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the reference models")
	}
	for _, name := range []string{"ich", "pneumothorax", "psoas"} {
		t.Run(name, func(t *testing.T) {
			repo := copyBundle(t, name, func(y string) string { return withIOBinding(y, "on") })
			plain := NewRegistry("../models", quietLog())
			defer plain.Close()
			_, err := plain.Load(name, nil)
			require.NoError(t, err)
			bound := NewRegistry(repo, quietLog())
			defer bound.Close()
			_, err = bound.Load(name, nil)
			require.NoError(t, err)
			pm, pdone, err := plain.Acquire(name, "")
			require.NoError(t, err)
			defer pdone()
			bm, bdone, err := bound.Acquire(name, "")
			require.NoError(t, err)
			defer bdone()
			assert.Equal(t, "host memory", bm.IOBinding())
			assert.Equal(t, "off: the session runs on the CPU", pm.IOBinding())

			rng := rand.New(rand.NewPCG(7, uint64(len(name))))
			for _, n := range []int64{1, 3} {
				shape := append([]int64{n}, bm.Spec.Inputs[0].Dims...)
				count, err := tensor.NumElements(shape)
				require.NoError(t, err)
				v := make([]float32, count)
				for i := range v {
					v[i] = float32(rng.NormFloat64())
				}
				in := tensor.FromFloat32(bm.Spec.Inputs[0].Name, shape, v)
				want, _, err := pm.Infer(context.Background(), []*tensor.Tensor{in})
				require.NoError(t, err)
				got, _, err := bm.Infer(context.Background(), []*tensor.Tensor{in})
				require.NoError(t, err)
				require.Len(t, got, len(want))
				for i := range want {
					assert.Equal(t, want[i].Shape, got[i].Shape, want[i].Name)
					assert.True(t, string(want[i].Data) == string(got[i].Data), "%s differs at batch %d", want[i].Name, n)
				}
			}
		})
	}
}

// copyBundle copies reference bundle name into a new repository, its
// bundle.yaml rewritten by edit, and returns the repository.
func copyBundle(t *testing.T, name string, edit func(string) string) string {
	repo := t.TempDir()
	require.NoError(t, os.CopyFS(filepath.Join(repo, name), os.DirFS(filepath.Join("..", "models", name))))
	yamlPath := filepath.Join(repo, name, "bundle.yaml")
	y, err := os.ReadFile(yamlPath)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(yamlPath, []byte(edit(string(y))), 0o644))
	return repo
}

// resident moves a tensor's bytes into "device" memory: host memory here,
// standing in for a GPU's, as the preprocessing kernels would leave them.
func resident(t *testing.T, in *tensor.Tensor) *tensor.Tensor {
	d := standIn(t, len(in.Data))
	copy(d.Host, in.Data)
	return &tensor.Tensor{Name: in.Name, DType: in.DType, Shape: in.Shape, Device: d}
}

// standIn is n bytes of "device" memory (host memory standing in),
// poisoned so that bytes never written show.
func standIn(t *testing.T, n int) *tensor.DeviceBytes {
	mem, err := hostMemory{}.alloc(n)
	require.NoError(t, err)
	t.Cleanup(func() { _ = hostMemory{}.free(mem) })
	for i := range mem.host {
		mem.host[i] = 0xff // a float32 NaN
	}
	return &tensor.DeviceBytes{Addr: mem.addr, Len: n, Host: mem.host}
}

// unboundAffine loads the affine bundle with its I/O not bound.
func unboundAffine(t *testing.T) *Model {
	plain := NewRegistry(testrepo.Write(t, testrepo.Affine()), quietLog())
	t.Cleanup(plain.Close)
	require.NoError(t, plain.LoadAll())
	pm, pdone, err := plain.Acquire("affine", "")
	require.NoError(t, err)
	t.Cleanup(pdone)
	return pm
}

// Inputs already in the memory a model binds (a GPU's preprocessing
// output) are copied into the batch there, alone, batched with host
// inputs, and in chunks beyond max_batch_size; a model whose inputs are
// not bound refuses them.
func TestResidentInputs(t *testing.T) {
	r, m, done := boundAffine(t, 1)
	defer r.Close()
	defer done()
	kind, _ := m.IOMemory()
	assert.Equal(t, "host", kind)

	check := func(in, out *tensor.Tensor) {
		x, _ := in.Float32s()
		y, err := out.Float32s()
		require.NoError(t, err)
		require.Len(t, y, len(x))
		for i := range x {
			require.Equal(t, 2*x[i]+1, y[i], "item %d", i)
		}
	}
	var wg sync.WaitGroup
	for c := 0; c < 8; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			in := affineInput(float32(100*c), int64(1+c%3))
			send := in
			if c%2 == 0 {
				send = resident(t, in)
			}
			outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{send})
			if assert.NoError(t, err) {
				check(in, outs[0])
			}
		}(c)
	}
	wg.Wait()
	assert.Less(t, m.Stats().Executions, int64(8), "resident and host inputs batched together")

	big := affineInput(-7, 19) // max_batch_size 8: three chunks
	outs, _, err := m.InferAll(context.Background(), []*tensor.Tensor{resident(t, big)})
	require.NoError(t, err)
	check(big, outs[0])

	pm := unboundAffine(t)
	kind, _ = pm.IOMemory()
	assert.Empty(t, kind)
	_, _, err = pm.Infer(context.Background(), []*tensor.Tensor{resident(t, affineInput(0, 1))})
	assert.Equal(t, codes.FailedPrecondition, codeOf(err), "%v", err)
	assert.ErrorContains(t, err, "not bound")
}

// Outputs a request asks for in the memory the model's outputs are bound
// in (the GPU's postprocessing reads them there) are copied there and
// never to the host: alone, batched with requests that want theirs on the
// host, and in chunks beyond max_batch_size. Bad destinations are refused
// before anything runs.
func TestResidentOutputs(t *testing.T) {
	r, m, done := boundAffine(t, 1)
	defer r.Close()
	defer done()

	check := func(in *tensor.Tensor, y []float32) {
		x, _ := in.Float32s()
		require.Len(t, y, len(x))
		for i := range x {
			require.Equal(t, 2*x[i]+1, y[i], "item %d", i)
		}
	}
	deviceValues := func(out *tensor.Tensor, into *tensor.DeviceBytes) []float32 {
		require.Nil(t, out.Data, "nothing came to the host")
		require.Same(t, into, out.Device)
		v, err := (&tensor.Tensor{DType: tensor.Float32, Shape: out.Shape, Data: into.Host}).Float32s()
		require.NoError(t, err)
		return v
	}
	var wg sync.WaitGroup
	for c := 0; c < 8; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			in := affineInput(float32(100*c), int64(1+c%3))
			if c%2 == 1 {
				outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{in})
				if assert.NoError(t, err) {
					y, _ := outs[0].Float32s()
					check(in, y)
				}
				return
			}
			n, err := m.OutputBytes(0, in.Shape[0])
			require.NoError(t, err)
			into := standIn(t, n)
			outs, _, err := m.InferAllTo(context.Background(), []*tensor.Tensor{in}, []*tensor.DeviceBytes{into})
			if assert.NoError(t, err) {
				assert.Equal(t, in.Shape, outs[0].Shape)
				check(in, deviceValues(outs[0], into))
			}
		}(c)
	}
	wg.Wait()
	assert.Less(t, m.Stats().Executions, int64(8), "requests with outputs in device memory and on the host batched together")

	big := affineInput(-7, 19) // max_batch_size 8: three chunks
	n, err := m.OutputBytes(0, 19)
	require.NoError(t, err)
	into := standIn(t, n)
	outs, _, err := m.InferAllTo(context.Background(), []*tensor.Tensor{resident(t, big)}, []*tensor.DeviceBytes{into})
	require.NoError(t, err)
	assert.Equal(t, big.Shape, outs[0].Shape)
	check(big, deviceValues(outs[0], into))

	_, _, err = m.InferAllTo(context.Background(), []*tensor.Tensor{big}, []*tensor.DeviceBytes{standIn(t, n-4)})
	assert.Equal(t, codes.InvalidArgument, codeOf(err), "%v", err)
	assert.ErrorContains(t, err, `output "y" needs 456 bytes for 19 items; the destination has 452`)
	_, _, err = m.InferAllTo(context.Background(), []*tensor.Tensor{big}, []*tensor.DeviceBytes{nil, into})
	assert.Equal(t, codes.InvalidArgument, codeOf(err), "%v", err)

	pm := unboundAffine(t)
	_, _, err = pm.InferAllTo(context.Background(), []*tensor.Tensor{affineInput(0, 1)}, []*tensor.DeviceBytes{standIn(t, 24)})
	assert.Equal(t, codes.FailedPrecondition, codeOf(err), "%v", err)
	assert.ErrorContains(t, err, "outputs are not bound")
}
