package engine

import (
	"context"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/voxserve/voxserve/internal/testrepo"
	"github.com/voxserve/voxserve/tensor"
)

// affineBatching is the affine bundle with dynamic batching on.
func affineBatching(extra string) testrepo.Bundle {
	b := testrepo.Affine()
	b.YAML = strings.Replace(b.YAML, "max_batch_size: 4\n", "max_batch_size: 8\n", 1)
	b.YAML = strings.Replace(b.YAML, "max_queue_size: 4\n", "max_queue_size: 64\n", 1)
	b.YAML += extra
	return b
}

func affineInput(base float32, n int64) *tensor.Tensor {
	v := make([]float32, n*6)
	for i := range v {
		v[i] = base + float32(i)
	}
	return tensor.FromFloat32("x", []int64{n, 2, 3}, v)
}

// Concurrent requests of the same shape are merged into batches, and each
// gets exactly its own rows back.
func TestDynamicBatchingMergesRequests(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, affineBatching("dynamic_batching:\n  max_queue_delay_microseconds: 100000\n")), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	defer done()

	const clients = 16
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			n := int64(1 + c%2)
			in := affineInput(float32(100*c), n)
			outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{in})
			if !assert.NoError(t, err) {
				return
			}
			x, _ := in.Float32s()
			y, _ := outs[0].Float32s()
			require.Len(t, y, len(x))
			for i := range x {
				assert.Equal(t, 2*x[i]+1, y[i], "client %d item %d", c, i)
			}
		}(c)
	}
	wg.Wait()
	st := m.Stats()
	assert.Equal(t, int64(clients), st.Success)
	assert.Equal(t, int64(24), st.Inferences) // 8 requests of 1 and 8 of 2
	assert.Less(t, st.Executions, int64(clients), "batch sizes %v", st.BatchSizes)
	for size := range st.BatchSizes {
		assert.LessOrEqual(t, size, int64(8))
	}
	// Per-request compute (Triton's inference_stats) counts every request
	// with its batch's time; per-execution time counts each batch once.
	assert.Equal(t, int64(clients), st.Computed)
	var execInfer time.Duration
	for _, b := range st.BatchSizes {
		execInfer += b.Infer
	}
	assert.Equal(t, st.InferTime, execInfer)
	assert.GreaterOrEqual(t, st.RequestInferTime, st.InferTime, "a batch of k counts k times per request")
}

// Without dynamic_batching every request runs as its own batch.
func TestNoDynamicBatching(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, affineBatching("")), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	defer done()
	var wg sync.WaitGroup
	for c := 0; c < 8; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := m.Infer(context.Background(), []*tensor.Tensor{affineInput(0, 1)})
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	st := m.Stats()
	require.Len(t, st.BatchSizes, 1)
	assert.Equal(t, int64(8), st.BatchSizes[1].Count)
}

// Requests of different per-item shapes never share a batch.
func TestOnlyEqualShapesBatch(t *testing.T) {
	b := testrepo.Hyperdensity()
	b.YAML += "dynamic_batching:\n  max_queue_delay_microseconds: 50000\n"
	r := NewRegistry(testrepo.Write(t, b), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("hyperdensity", "")
	require.NoError(t, err)
	defer done()
	var wg sync.WaitGroup
	for c := 0; c < 12; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			side := int64(4 + c%3)
			in := tensor.FromFloat32("image", []int64{1, 1, 2, side, side}, make([]float32, 2*side*side))
			outs, _, err := m.Infer(context.Background(), []*tensor.Tensor{in})
			if assert.NoError(t, err) {
				assert.Equal(t, []int64{1, 1, 2, side, side}, outs[0].Shape)
			}
		}(c)
	}
	wg.Wait()
	assert.Equal(t, int64(12), m.Stats().Success)
}

// STAT requests go ahead of every queued routine request; within a lane,
// first come, first served.
func TestStatGoesFirst(t *testing.T) {
	b := testrepo.Slow(40)
	b.YAML = strings.Replace(b.YAML, "max_queue_size: 2", "max_queue_size: 16", 1)
	r := NewRegistry(testrepo.Write(t, b), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("slow", "")
	require.NoError(t, err)
	defer done()

	finish := occupy(t, m)
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	send := func(name string, prio int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Long enough that completions are tens of ms apart.
			_, _, err := m.Infer(WithPriority(context.Background(), prio), []*tensor.Tensor{busy(160)})
			assert.NoError(t, err)
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		}()
	}
	for i, name := range []string{"routine-1", "routine-2", "routine-3"} {
		send(name, 2)
		require.Eventually(t, func() bool { return m.Queued() == int64(i+1) }, 5*time.Second, time.Millisecond)
	}
	send("stat-1", 1)
	require.Eventually(t, func() bool { return m.Queued() == 4 }, 5*time.Second, time.Millisecond)
	send("stat-2", 1)
	require.Eventually(t, func() bool { return m.Queued() == 5 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, []int{2, 3}, m.Stats().QueueDepth)
	finish()
	wg.Wait()
	assert.Equal(t, []string{"stat-1", "stat-2", "routine-1", "routine-2", "routine-3"}, order)

	_, _, err = m.Infer(WithPriority(context.Background(), 3), []*tensor.Tensor{busy(8)})
	assert.Equal(t, codes.InvalidArgument, codeOf(err))
	assert.Contains(t, err.Error(), "priority levels 1 to 2")
}

// With an instance reserved for STAT, routine work never takes the last
// free instance: a STAT request arriving while routine work runs starts at
// once, ahead of routine requests queued before it.
func TestReservedInstanceForStat(t *testing.T) {
	b := testrepo.Slow(40)
	b.YAML = strings.Replace(b.YAML, "instance_count: 1", "instance_count: 2", 1)
	b.YAML = strings.Replace(b.YAML, "max_queue_size: 2", "max_queue_size: 16", 1)
	b.YAML += "dynamic_batching:\n  reserved_instances: 1\n"
	r := NewRegistry(testrepo.Write(t, b), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("slow", "")
	require.NoError(t, err)
	defer done()

	finish := occupy(t, m) // routine, on the unreserved instance
	routine := make(chan error, 1)
	go func() {
		_, _, err := m.Infer(context.Background(), []*tensor.Tensor{busy(8)})
		routine <- err
	}()
	require.Eventually(t, func() bool { return m.Queued() == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	assert.Equal(t, int64(1), m.Queued(), "routine work must not take the reserved instance")
	assert.Equal(t, int32(1), m.sched.running.Load())

	_, tm, err := m.Infer(WithPriority(context.Background(), 1), []*tensor.Tensor{busy(8)})
	require.NoError(t, err)
	assert.Less(t, tm.Queue, 50*time.Millisecond, "STAT ran on the reserved instance without waiting")
	select {
	case err := <-routine:
		t.Fatalf("the queued routine request finished before the long one: %v", err)
	default:
	}
	finish()
	require.NoError(t, <-routine)
}

// A request larger than max_batch_size runs in chunks but counts as one
// request; its items and executions count in full.
func TestChunkedRequestCountsOnce(t *testing.T) {
	r := NewRegistry(testrepo.Write(t, affineBatching("")), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	defer done()
	outs, _, err := m.InferAll(context.Background(), []*tensor.Tensor{affineInput(0, 20)})
	require.NoError(t, err)
	assert.Equal(t, []int64{20, 2, 3}, outs[0].Shape)
	st := m.Stats()
	assert.Equal(t, int64(1), st.Success)
	assert.Equal(t, int64(20), st.Inferences)
	assert.Equal(t, int64(3), st.Executions) // 8 + 8 + 4
}

// TestStressPrioritiesAndCancellations runs many clients at once (run with
// -race): mixed priorities and batch sizes, some cancelled before or
// while queued, some with deadlines, on two instances with dynamic
// batching. Every request that gets an answer gets its own rows; the others
// get Canceled or DeadlineExceeded; nothing stays queued, the statistics
// add up, and no goroutine is left behind.
func TestStressPrioritiesAndCancellations(t *testing.T) {
	b := affineBatching("dynamic_batching:\n  max_queue_delay_microseconds: 300\n  preferred_batch_size: [4, 8]\n")
	b.YAML = strings.Replace(b.YAML, "instance_count: 1\n", "instance_count: 2\n", 1)
	b.YAML = strings.Replace(b.YAML, "max_queue_size: 64\n", "max_queue_size: 4096\n", 1)
	r := NewRegistry(testrepo.Write(t, b), quietLog())
	require.NoError(t, r.LoadAll())
	m, done, err := r.Acquire("affine", "")
	require.NoError(t, err)
	before := runtime.NumGoroutine()

	const clients, rounds = 48, 20
	var ok, cancelled, expired atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for i := 0; i < rounds; i++ {
				ctx := WithPriority(context.Background(), 1+rng.IntN(2))
				var cancel context.CancelFunc
				switch rng.IntN(5) {
				case 0: // cancelled before it is sent
					ctx, cancel = context.WithCancel(ctx)
					cancel()
				case 1: // cancelled while it waits or runs
					ctx, cancel = context.WithCancel(ctx)
					time.AfterFunc(time.Duration(rng.IntN(300))*time.Microsecond, cancel)
				case 2: // a deadline that may pass in the queue
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rng.IntN(2000))*time.Microsecond)
				default:
					cancel = func() {}
				}
				n := int64(1 + rng.IntN(3))
				in := affineInput(float32(1000*c+10*i), n)
				outs, _, err := m.Infer(ctx, []*tensor.Tensor{in})
				cancel()
				switch codeOf(err) {
				case codes.OK:
					ok.Add(1)
					x, _ := in.Float32s()
					y, _ := outs[0].Float32s()
					if assert.Len(t, y, len(x)) {
						for k := range x {
							if y[k] != 2*x[k]+1 {
								t.Errorf("client %d round %d: item %d is %g, want %g", c, i, k, y[k], 2*x[k]+1)
								break
							}
						}
					}
				case codes.Canceled:
					cancelled.Add(1)
				case codes.DeadlineExceeded:
					expired.Add(1)
				default:
					t.Errorf("client %d round %d: %v", c, i, err)
				}
			}
		}(c)
	}
	wg.Wait()
	total := int64(clients * rounds)
	assert.Equal(t, total, ok.Load()+cancelled.Load()+expired.Load())
	assert.Positive(t, ok.Load())
	assert.Positive(t, cancelled.Load())
	assert.Zero(t, m.Queued())
	st := m.Stats()
	assert.Equal(t, ok.Load(), st.Success)
	assert.Equal(t, total-ok.Load(), st.Failure)
	t.Logf("%d ok, %d cancelled, %d expired; %d executions for %d inferences", ok.Load(), cancelled.Load(), expired.Load(), st.Executions, st.Inferences)
	done()
	r.Close()
	assert.Eventually(t, func() bool { return runtime.NumGoroutine() <= before }, 5*time.Second, 10*time.Millisecond,
		"goroutines: %d before, %d after", before, runtime.NumGoroutine())
}
