package engine

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
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
	slots chan struct{} // one token per free instance
	// io holds each instance's bound inputs and outputs (bound.go); nil
	// when runs go through onnxruntime_go's tensors. ioWhere says which.
	io       chan *boundIO
	ioWhere  string
	ioKind   string
	ioDevice int
	sched    *scheduler
	stats    stats
	// lost, if set, is told of a run error that lost the GPU.
	lost func(error)
	// inflight lets Unload wait for requests that hold the model.
	inflight sync.WaitGroup
}

// VersionString is the version as the API spells it.
func (m *Model) VersionString() string { return strconv.FormatInt(m.Version, 10) }

// Provider is the execution provider the session got (cpu, cuda).
func (m *Model) Provider() string { return m.sess.provider }

// IOBinding says where the instances' inputs and outputs are bound ("device
// memory (cuda:0, …)", "host memory"), or "off: " and why they are not.
func (m *Model) IOBinding() string { return m.ioWhere }

// IOMemory names the memory the instances' inputs are bound in: "device"
// and its ordinal, "host", or "" when they are not bound. Inputs already
// in that memory (tensor.Tensor.Device) are copied into a batch there.
func (m *Model) IOMemory() (kind string, device int) { return m.ioKind, m.ioDevice }

// Timings splits a request's time in the engine.
type Timings struct {
	Queue   time.Duration
	Compute time.Duration
	// Input (batch assembly), Infer (the model) and Output (splitting the
	// results) of the batch the request ran in: Triton's compute_input,
	// compute_infer and compute_output.
	Input, Infer, Output time.Duration
}

// ErrQueueFull is wrapped by the RESOURCE_EXHAUSTED error of a full queue.
var ErrQueueFull = errors.New("queue full")

// Infer validates the inputs against the bundle and runs them through the
// scheduler: queued in the lane of the context's priority (WithPriority),
// batched with other requests of the same shape when the bundle enables
// dynamic batching, bounded by the queue size and the context's deadline.
func (m *Model) Infer(ctx context.Context, inputs []*tensor.Tensor) (outs []*tensor.Tensor, tm Timings, err error) {
	defer m.count(time.Now(), &tm, &err)
	return m.infer(ctx, inputs, nil)
}

// count records one request's outcome in the model's statistics.
func (m *Model) count(start time.Time, tm *Timings, err *error) {
	if status.Code(*err) == codes.DeadlineExceeded && tm.Compute == 0 {
		m.stats.expired.Add(1)
	}
	m.stats.request(*err, time.Since(start), *tm)
}

// infer is Infer without the statistics, so that InferAll counts a
// request once however many chunks it takes.
func (m *Model) infer(ctx context.Context, inputs []*tensor.Tensor, into []*tensor.DeviceBytes) (outs []*tensor.Tensor, tm Timings, err error) {
	ordered, err := orderInputs(m.Spec, inputs)
	if err != nil {
		return nil, tm, err
	}
	lane, err := m.sched.lane(priorityOf(ctx))
	if err != nil {
		return nil, tm, err
	}
	r := &request{ctx: ctx, inputs: ordered, n: 1, lane: lane, enq: time.Now(), done: make(chan result, 1)}
	if m.Spec.MaxBatchSize > 0 {
		r.n, r.key = ordered[0].Shape[0], itemKey(ordered)
	}
	resident, err := m.checkInto(into, r.n)
	if err != nil {
		return nil, tm, err
	}
	r.into = into
	for _, in := range ordered {
		r.bytes += int64(in.ByteLen())
		if in.Device != nil {
			if m.io == nil {
				return nil, tm, status.Errorf(codes.FailedPrecondition, "model %s: input %q is in device memory, and the model's inputs are not bound (execution.io_binding)", m, in.Name)
			}
			resident = true
		}
	}
	if err := m.sched.submit(r); err != nil {
		return nil, tm, err
	}
	var timeout <-chan time.Time
	if _, has := ctx.Deadline(); !has && m.Spec.Queue.DefaultTimeoutMicroseconds > 0 && m.Spec.Queue.TimeoutAction == "REJECT" {
		t := time.NewTimer(time.Duration(m.Spec.Queue.DefaultTimeoutMicroseconds) * time.Microsecond)
		defer t.Stop()
		timeout = t.C
	}
	for {
		select {
		case res := <-r.done:
			return res.outs, res.tm, res.err
		case <-ctx.Done():
			if m.sched.withdraw(r) {
				return nil, tm, ctxStatus(ctx.Err(), "while queued")
			}
			if resident {
				// The running batch still reads or writes the caller's
				// device memory, which it frees once we return: wait for it.
				<-r.done
			}
			return nil, tm, ctxStatus(ctx.Err(), "during inference")
		case <-timeout:
			if m.sched.withdraw(r) {
				return nil, tm, status.Errorf(codes.DeadlineExceeded, "model %s: queued longer than default_timeout_microseconds (%d)", m, m.Spec.Queue.DefaultTimeoutMicroseconds)
			}
			timeout = nil // already running: wait for it
		}
	}
}

// checkInto validates a request's output destinations (InferAllTo) for a
// batch of n items, and says whether the request has memory of its own in
// a batch's hands (resident inputs or outputs).
func (m *Model) checkInto(into []*tensor.DeviceBytes, n int64) (resident bool, err error) {
	if len(into) > len(m.Spec.Outputs) {
		return false, status.Errorf(codes.InvalidArgument, "model %s: %d output destinations for %d outputs", m, len(into), len(m.Spec.Outputs))
	}
	for i, d := range into {
		if d == nil {
			continue
		}
		name := m.Spec.Outputs[i].Name
		if m.io == nil {
			return false, status.Errorf(codes.FailedPrecondition, "model %s: output %q asked for in device memory, and the model's outputs are not bound (execution.io_binding)", m, name)
		}
		want, err := m.OutputBytes(i, n)
		if err != nil {
			return false, err
		}
		if d.Len != want {
			return false, status.Errorf(codes.InvalidArgument, "model %s: output %q needs %d bytes for %d items; the destination has %d", m, name, want, n, d.Len)
		}
		resident = true
	}
	return resident, nil
}

// OutputBytes is the size of output i for a request of n items (n is 1
// for a model without a batch axis). Bound outputs have fixed dims.
func (m *Model) OutputBytes(i int, n int64) (int, error) {
	o := m.Spec.Outputs[i]
	dt, err := tensor.ParseDType(o.DataType)
	if err != nil {
		return 0, err
	}
	dims := o.Dims
	if m.Spec.MaxBatchSize > 0 {
		dims = append([]int64{n}, dims...)
	}
	count, err := tensor.NumElements(dims) // a dynamic dim (-1) is an error
	if err != nil {
		return 0, status.Errorf(codes.FailedPrecondition, "model %s: output %q has no fixed size: %v", m, o.Name, err)
	}
	return int(count) * dt.Size(), nil
}

// Queued is the number of requests waiting for an instance.
func (m *Model) Queued() int64 {
	var n int64
	for _, d := range m.sched.depth() {
		n += int64(d)
	}
	return n
}

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
	m.stats.sizes = map[int64]*BatchStats{}
	m.sched = newScheduler(m)
	return m
}

// close waits for in-flight requests, stops the scheduler once the
// running batches are done, then frees the session.
func (m *Model) close() {
	m.inflight.Wait()
	m.sched.close()
	for i := 0; i < m.Spec.InstanceCount; i++ {
		<-m.slots
	}
	closeInstanceIO(m.io)
	m.sess.close()
	releaseNativeMemory()
}

func (m *Model) String() string { return fmt.Sprintf("%s:%d", m.Spec.Name, m.Version) }

// BundleDir is the bundle folder the version was loaded from.
func (m *Model) BundleDir() string { return filepath.Dir(filepath.Dir(m.Path)) }

// InferAll runs inputs whose batch axis may exceed max_batch_size, in
// chunks of at most max_batch_size, and concatenates the outputs along the
// batch axis. A study's slices or patches are one request's batch.
func (m *Model) InferAll(ctx context.Context, inputs []*tensor.Tensor) (outs []*tensor.Tensor, total Timings, err error) {
	return m.InferAllTo(ctx, inputs, nil)
}

// InferAllTo is InferAll with output i written to into[i] where that is
// not nil: memory the caller owns, of the kind the model's outputs are
// bound in (IOMemory), sized for the whole request (OutputBytes). Such an
// output is copied there from the bound buffer, device to device on a GPU,
// and comes back as a tensor over it (tensor.Tensor.Device) that never
// passed through the host: what the GPU's postprocessing reads. into[i]
// must stay valid until InferAllTo returns, which it does, even when ctx
// is cancelled, only once no batch writes there.
func (m *Model) InferAllTo(ctx context.Context, inputs []*tensor.Tensor, into []*tensor.DeviceBytes) (outs []*tensor.Tensor, total Timings, err error) {
	defer m.count(time.Now(), &total, &err)
	maxB := m.Spec.MaxBatchSize
	if maxB <= 0 || len(inputs) == 0 || len(inputs[0].Shape) == 0 || inputs[0].Shape[0] <= maxB {
		return m.infer(ctx, inputs, into)
	}
	// Validate the whole request first, so errors describe it, not a chunk.
	inputs, err = orderInputsBatch(m.Spec, inputs, false)
	if err != nil {
		return nil, Timings{}, err
	}
	n := inputs[0].Shape[0]
	for _, in := range inputs {
		if in.Shape[0] != n {
			return nil, Timings{}, status.Errorf(codes.InvalidArgument, "inputs disagree on the batch size (%d and %d)", n, in.Shape[0])
		}
	}
	if _, err := m.checkInto(into, n); err != nil {
		return nil, Timings{}, err
	}
	for lo := int64(0); lo < n; lo += maxB {
		hi := min(lo+maxB, n)
		chunk := make([]*tensor.Tensor, len(inputs))
		for i, in := range inputs {
			chunk[i] = batchSlice(in, lo, hi)
		}
		var chunkInto []*tensor.DeviceBytes
		for i, d := range into {
			if chunkInto == nil {
				chunkInto = make([]*tensor.DeviceBytes, len(into))
			}
			if d != nil {
				chunkInto[i] = deviceSlice(d, lo, hi, n)
			}
		}
		res, tm, err := m.infer(ctx, chunk, chunkInto)
		if err != nil {
			return nil, total, err
		}
		total.Queue += tm.Queue
		total.Compute += tm.Compute
		total.Input += tm.Input
		total.Infer += tm.Infer
		total.Output += tm.Output
		if outs == nil {
			outs = make([]*tensor.Tensor, len(res))
			for i, r := range res {
				shape := append([]int64{n}, r.Shape[1:]...)
				outs[i] = &tensor.Tensor{Name: r.Name, DType: r.DType, Shape: shape}
				if i < len(into) && into[i] != nil {
					outs[i].Device = into[i] // each chunk wrote its part
				} else {
					outs[i].Data = make([]byte, 0, int(n)*len(r.Data)/int(max(r.Shape[0], 1)))
				}
			}
		}
		for i, r := range res {
			if len(r.Shape) == 0 || r.Shape[0] != hi-lo {
				return nil, total, status.Errorf(codes.Internal, "output %q has no batch axis of %d", r.Name, hi-lo)
			}
			if outs[i].Device == nil {
				outs[i].Data = append(outs[i].Data, r.Data...)
			}
		}
	}
	return outs, total, nil
}

// batchSlice views items [lo, hi) of a tensor's batch axis without copying,
// wherever its bytes are.
func batchSlice(t *tensor.Tensor, lo, hi int64) *tensor.Tensor {
	per := int64(t.ByteLen()) / t.Shape[0]
	shape := append([]int64{hi - lo}, t.Shape[1:]...)
	out := &tensor.Tensor{Name: t.Name, DType: t.DType, Shape: shape}
	if d := t.Device; d != nil {
		out.Device = deviceSlice(d, lo, hi, t.Shape[0])
		return out
	}
	out.Data = t.Data[lo*per : hi*per]
	return out
}

// deviceSlice is items [lo, hi) of n items' bytes at d.
func deviceSlice(d *tensor.DeviceBytes, lo, hi, n int64) *tensor.DeviceBytes {
	per := int64(d.Len) / n
	out := &tensor.DeviceBytes{Addr: d.Addr + uintptr(lo*per), Len: int((hi - lo) * per)}
	if d.Host != nil {
		out.Host = d.Host[lo*per : hi*per]
	}
	return out
}
