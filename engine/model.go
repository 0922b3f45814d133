package engine

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/bundle"
	"github.com/voxserve/voxserve/tensor"
)

// Model is one loaded version of a bundle, ready to run.
type Model struct {
	Spec    *bundle.Spec
	Version int64
	// Path is the ONNX file it was loaded from.
	Path string

	sess  *session
	slots chan struct{} // one token per instance
	// waiting counts requests queued for a slot, bounded by max_queue_size.
	waiting atomic.Int64
	// inflight lets Unload wait for requests that hold the model.
	inflight sync.WaitGroup
}

// VersionString is the version as the API spells it.
func (m *Model) VersionString() string { return strconv.FormatInt(m.Version, 10) }

// Provider is the execution provider the session got (cpu, cuda).
func (m *Model) Provider() string { return m.sess.provider }

// Timings splits a request's time in the engine.
type Timings struct {
	Queue   time.Duration
	Compute time.Duration
}

// ErrQueueFull is wrapped by the RESOURCE_EXHAUSTED error of a full queue.
var ErrQueueFull = errors.New("queue full")

// Infer validates the inputs against the bundle, waits for an instance (up to
// the queue bound and the context's deadline) and runs the model.
func (m *Model) Infer(ctx context.Context, inputs []*tensor.Tensor) ([]*tensor.Tensor, Timings, error) {
	var tm Timings
	ordered, err := orderInputs(m.Spec, inputs)
	if err != nil {
		return nil, tm, err
	}
	start := time.Now()
	if err := m.acquire(ctx); err != nil {
		return nil, tm, err
	}
	defer func() { m.slots <- struct{}{} }()
	tm.Queue = time.Since(start)
	// The deadline may have passed while we waited: skip pointless work.
	if err := ctx.Err(); err != nil {
		return nil, tm, ctxStatus(err, "before inference started")
	}
	start = time.Now()
	outs, err := m.sess.run(ordered)
	tm.Compute = time.Since(start)
	if err != nil {
		return nil, tm, status.Errorf(codes.Internal, "model %s version %d: %v", m.Spec.Name, m.Version, err)
	}
	return outs, tm, nil
}

func (m *Model) acquire(ctx context.Context) error {
	select {
	case <-m.slots:
		return nil
	default:
	}
	if n := m.waiting.Add(1); n > int64(m.Spec.Queue.MaxQueueSize) {
		m.waiting.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "model %s version %d: %v (%d requests waiting, max_queue_size %d)",
			m.Spec.Name, m.Version, ErrQueueFull, n-1, m.Spec.Queue.MaxQueueSize)
	}
	defer m.waiting.Add(-1)
	if _, has := ctx.Deadline(); !has && m.Spec.Queue.DefaultTimeoutMicroseconds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(m.Spec.Queue.DefaultTimeoutMicroseconds)*time.Microsecond)
		defer cancel()
	}
	select {
	case <-m.slots:
		return nil
	case <-ctx.Done():
		return ctxStatus(ctx.Err(), "while queued")
	}
}

// Queued is the number of requests waiting for an instance.
func (m *Model) Queued() int64 { return m.waiting.Load() }

func ctxStatus(err error, when string) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Errorf(codes.DeadlineExceeded, "deadline exceeded %s", when)
	}
	return status.Errorf(codes.Canceled, "request cancelled %s", when)
}

func newModel(spec *bundle.Spec, version int64, path string, sess *session) *Model {
	m := &Model{Spec: spec, Version: version, Path: path, sess: sess, slots: make(chan struct{}, spec.InstanceCount)}
	for i := 0; i < spec.InstanceCount; i++ {
		m.slots <- struct{}{}
	}
	return m
}

// close waits for in-flight requests, then frees the session.
func (m *Model) close() {
	m.inflight.Wait()
	m.sess.close()
}

func (m *Model) String() string { return fmt.Sprintf("%s:%d", m.Spec.Name, m.Version) }

// BundleDir is the bundle folder the version was loaded from.
func (m *Model) BundleDir() string { return filepath.Dir(filepath.Dir(m.Path)) }

// InferAll runs inputs whose batch axis may exceed max_batch_size, in
// chunks of at most max_batch_size, and concatenates the outputs along the
// batch axis. A study's slices or patches are one request's batch.
func (m *Model) InferAll(ctx context.Context, inputs []*tensor.Tensor) ([]*tensor.Tensor, Timings, error) {
	maxB := m.Spec.MaxBatchSize
	if maxB <= 0 || len(inputs) == 0 || len(inputs[0].Shape) == 0 || inputs[0].Shape[0] <= maxB {
		return m.Infer(ctx, inputs)
	}
	// Validate the whole request first, so errors describe it, not a chunk.
	inputs, err := orderInputsBatch(m.Spec, inputs, false)
	if err != nil {
		return nil, Timings{}, err
	}
	n := inputs[0].Shape[0]
	for _, in := range inputs {
		if in.Shape[0] != n {
			return nil, Timings{}, status.Errorf(codes.InvalidArgument, "inputs disagree on the batch size (%d and %d)", n, in.Shape[0])
		}
	}
	var total Timings
	var outs []*tensor.Tensor
	for lo := int64(0); lo < n; lo += maxB {
		hi := min(lo+maxB, n)
		chunk := make([]*tensor.Tensor, len(inputs))
		for i, in := range inputs {
			chunk[i] = batchSlice(in, lo, hi)
		}
		res, tm, err := m.Infer(ctx, chunk)
		if err != nil {
			return nil, total, err
		}
		total.Queue += tm.Queue
		total.Compute += tm.Compute
		if outs == nil {
			outs = make([]*tensor.Tensor, len(res))
			for i, r := range res {
				shape := append([]int64{n}, r.Shape[1:]...)
				outs[i] = &tensor.Tensor{Name: r.Name, DType: r.DType, Shape: shape, Data: make([]byte, 0, int(n)*len(r.Data)/int(max(r.Shape[0], 1)))}
			}
		}
		for i, r := range res {
			if len(r.Shape) == 0 || r.Shape[0] != hi-lo {
				return nil, total, status.Errorf(codes.Internal, "output %q has no batch axis of %d", r.Name, hi-lo)
			}
			outs[i].Data = append(outs[i].Data, r.Data...)
		}
	}
	return outs, total, nil
}

// batchSlice views items [lo, hi) of a tensor's batch axis without copying.
func batchSlice(t *tensor.Tensor, lo, hi int64) *tensor.Tensor {
	per := int64(len(t.Data)) / t.Shape[0]
	shape := append([]int64{hi - lo}, t.Shape[1:]...)
	return &tensor.Tensor{Name: t.Name, DType: t.DType, Shape: shape, Data: t.Data[lo*per : hi*per]}
}
