package engine

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/internal/testlog"
	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/tensor"
)

// A version runs its model_warmup requests at load, on every instance's
// bound I/O, before it is ready; they do not count as requests.
func TestWarmupRunsAtLoad(t *testing.T) {
	b := affineBatching("model_warmup:\n  - {name: full batch, batch_size: 8, count: 2, inputs: {x: {random_data: true}}}\n  - {name: single}\n")
	b.YAML = strings.Replace(b.YAML, "instance_count: 1\n", "instance_count: 2\n", 1)
	b.YAML = withIOBinding(b.YAML, "on")
	var logs testlog.Buffer
	r := NewRegistry(testrepo.Write(t, b), slog.New(slog.NewTextHandler(&logs, nil)))
	defer r.Close()
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	defer done()
	out := logs.String()
	assert.Equal(t, 3, strings.Count(out, "warm-up run"), out)
	assert.Contains(t, out, `warmup="full batch" batch_size=8 run=2`)
	assert.Contains(t, out, `warmup=single batch_size=1 run=1`)
	assert.Less(t, strings.Index(out, "warm-up run"), strings.Index(out, "model loaded"), "warm before ready")
	st := m.Stats()
	assert.Zero(t, st.Success+st.Failure+st.Executions, "warm-up is not counted: %+v", st)

	// A single run runs on every instance: each one's bound output holds
	// y = 2x + 1.
	one := affineBatching("model_warmup: [{name: one}]\n")
	one.YAML = withIOBinding(strings.Replace(one.YAML, "instance_count: 1\n", "instance_count: 2\n", 1), "on")
	r1 := NewRegistry(testrepo.Write(t, one), quietLog())
	defer r1.Close()
	require.NoError(t, r1.LoadAll())
	m1, done1, err := r1.Acquire("affine", "")
	require.NoError(t, err)
	defer done1()
	ios := []*boundIO{<-m1.io, <-m1.io}
	for i, b := range ios {
		assert.NotEqual(t, make([]byte, 4*6), b.outs[0].buf.host[:4*6], "instance %d ran no warm-up", i)
		m1.io <- b
	}

	// And the model serves as before.
	outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{affineInput(1, 2)})
	require.NoError(t, err)
	y, _ := outs[0].Float32s()
	assert.Equal(t, float32(3), y[0])
}

// A warm-up the model cannot run fails the load with the entry named, and
// the registry keeps serving what it had.
func TestWarmupFailureFailsTheLoad(t *testing.T) {
	good := testrepo.Affine()
	bad := testrepo.Slow(1) // x·x over [n, n]: a 2 x 3 matrix cannot run
	bad.YAML += "model_warmup: [{name: not square, inputs: {x: {dims: [2, 3]}}}]\n"
	r := NewRegistry(testrepo.Write(t, good, bad), quietLog())
	defer r.Close()
	_, err := r.Load("affine", nil)
	require.NoError(t, err)
	_, err = r.Load("slow", nil)
	require.Error(t, err)
	assert.Equal(t, codes.InvalidArgument, codeOf(err), "%v", err)
	assert.ErrorContains(t, err, "model_warmup[0] (not square), run 1:")
	_, _, err = r.Acquire("slow", "")
	assert.Equal(t, codes.NotFound, codeOf(err))
	_, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	done()
}

func TestWarmupInputs(t *testing.T) {
	spec := &bundle.Spec{MaxBatchSize: 4, Inputs: []bundle.Input{
		{Name: "a", DataType: "float32", Dims: []int64{2, -1}}, {Name: "b", DataType: "int64", Dims: []int64{3}}}}
	w := &bundle.Warmup{BatchSize: 4, Inputs: map[string]bundle.WarmupInput{"a": {Dims: []int64{2, 5}, RandomData: true}}}
	ins, err := warmupInputs(spec, w, 1)
	require.NoError(t, err)
	assert.Equal(t, []int64{4, 2, 5}, ins[0].Shape)
	assert.Equal(t, []int64{4, 3}, ins[1].Shape)
	assert.Equal(t, make([]byte, 4*3*8), ins[1].Data, "zeros by default")
	v, err := ins[0].Float32s()
	require.NoError(t, err)
	assert.NotEqual(t, make([]float32, len(v)), v)
	again, err := warmupInputs(spec, w, 1)
	require.NoError(t, err)
	assert.Equal(t, ins[0].Data, again[0].Data, "seeded")
}
