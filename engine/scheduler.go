package engine

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/voxserve/voxserve/tensor"
)

// The scheduler is Triton's dynamic batcher, with priority lanes: each
// model version has one queue per priority level (1 the highest), FIFO
// within a lane. A batch is formed only when an instance is free, so that
// requests arriving while every instance is busy batch for free: the
// oldest request of the highest non-empty lane starts it, requests of the
// same per-item shape join it from the highest lane down (capped by
// max_batch_size and max_batch_bytes), and it waits up to
// max_queue_delay_microseconds from that oldest request's arrival for more
// unless it is full or at a preferred size. Without dynamic_batching each
// request is its own batch, still in priority order.

type priorityKey struct{}

// WithPriority returns a context whose requests go to priority level p (1
// the highest; 0 means the bundle's default).
func WithPriority(ctx context.Context, p int) context.Context {
	return context.WithValue(ctx, priorityKey{}, p)
}

func priorityOf(ctx context.Context) int {
	p, _ := ctx.Value(priorityKey{}).(int)
	return p
}

// request is one caller's work: inputs validated and in the model's order,
// their batch n at most max_batch_size.
type request struct {
	ctx    context.Context
	inputs []*tensor.Tensor
	n      int64
	key    string // per-item shapes and types: only equal keys batch
	bytes  int64
	lane   int
	enq    time.Time
	done   chan result // buffered: the runner never blocks on a gone caller
	// into[i], when set, is where output i goes: memory the caller owns,
	// of the kind the outputs are bound in (Model.InferAllTo).
	into []*tensor.DeviceBytes
}

// intoOf is where output i of r goes, nil for the host.
func (r *request) intoOf(i int) *tensor.DeviceBytes {
	if i < len(r.into) {
		return r.into[i]
	}
	return nil
}

type result struct {
	outs []*tensor.Tensor
	tm   Timings
	err  error
}

type scheduler struct {
	m        *Model
	mu       sync.Mutex
	lanes    [][]*request
	queued   int
	notify   chan struct{} // a request arrived (capacity 1)
	freed    chan struct{} // an instance came back (capacity 1)
	closing  chan struct{}
	finished chan struct{}

	running atomic.Int32 // batches executing now

	batching  bool
	delay     time.Duration
	preferred map[int64]bool
	maxBytes  int64
	defLane   int
	reserved  int // instances only lane 0 (STAT) may take

	draining string // set by drain: why new work is refused (under mu)
}

func newScheduler(m *Model) *scheduler {
	s := &scheduler{m: m, notify: make(chan struct{}, 1), freed: make(chan struct{}, 1), closing: make(chan struct{}), finished: make(chan struct{}),
		preferred: map[int64]bool{}, defLane: 2}
	levels := 2
	if d := m.Spec.DynamicBatching; d != nil {
		s.batching = true
		s.delay = time.Duration(d.MaxQueueDelayMicroseconds) * time.Microsecond
		for _, p := range d.PreferredBatchSize {
			s.preferred[p] = true
		}
		s.maxBytes = d.MaxBatchBytes
		levels, s.defLane, s.reserved = d.PriorityLevels, d.DefaultPriorityLevel, d.ReservedInstances
	}
	s.lanes = make([][]*request, levels)
	go s.dispatch()
	return s
}

// lane maps a requested priority onto a lane index; out of range is an error.
func (s *scheduler) lane(p int) (int, error) {
	if p == 0 {
		p = s.defLane
	}
	if p < 1 || p > len(s.lanes) {
		return 0, status.Errorf(codes.InvalidArgument, "priority %d: model %s has priority levels 1 to %d", p, s.m, len(s.lanes))
	}
	return p - 1, nil
}

// submit queues r, or refuses it at once when the queue is full.
func (s *scheduler) submit(r *request) error {
	s.mu.Lock()
	if s.draining != "" {
		s.mu.Unlock()
		return status.Errorf(codes.Unavailable, "model %s: %s", s.m, s.draining)
	}
	if s.queued >= s.m.Spec.Queue.MaxQueueSize {
		n := s.queued
		s.mu.Unlock()
		s.m.stats.rejected.Add(1)
		return status.Errorf(codes.ResourceExhausted, "model %s: %v (%d requests waiting, max_queue_size %d)", s.m, ErrQueueFull, n, s.m.Spec.Queue.MaxQueueSize)
	}
	s.lanes[r.lane] = append(s.lanes[r.lane], r)
	s.queued++
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return nil
}

// withdraw removes r if it is still queued; false if a batch took it.
func (s *scheduler) withdraw(r *request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	lane := s.lanes[r.lane]
	for i, q := range lane {
		if q == r {
			s.lanes[r.lane] = append(lane[:i], lane[i+1:]...)
			s.queued--
			return true
		}
	}
	return false
}

// Queued is the number of requests waiting, per lane.
func (s *scheduler) depth() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, len(s.lanes))
	for i, l := range s.lanes {
		out[i] = len(l)
	}
	return out
}

// dispatch forms a batch each time an instance is free and runs it there.
func (s *scheduler) dispatch() {
	defer close(s.finished)
	for {
		select {
		case <-s.m.slots:
		case <-s.closing:
			return
		}
		batch := s.form()
		if batch == nil {
			s.m.slots <- struct{}{} // closing: give the instance back
			return
		}
		s.running.Add(1)
		go func() {
			s.run(batch)
			s.running.Add(-1)
			s.m.slots <- struct{}{}
			select {
			case s.freed <- struct{}{}:
			default:
			}
		}()
	}
}

// take moves queued requests that fit into the batch: same per-item shape,
// within the size and byte caps, from the batch's own lane and the lanes
// above it, never below (routine work must not slow a STAT batch). With
// instances reserved for STAT, a routine batch leaves STAT requests for
// them.
func (s *scheduler) take(batch []*request, total, bytes int64) ([]*request, int64, int64) {
	maxB := max(s.m.Spec.MaxBatchSize, 1)
	first := batch[0]
	for li := range s.lanes {
		if li > first.lane || (s.reserved > 0 && first.lane > 0 && li == 0) {
			continue
		}
		kept := s.lanes[li][:0]
		for _, r := range s.lanes[li] {
			fits := s.batching && r.key == first.key && total+r.n <= maxB && (s.maxBytes == 0 || bytes+r.bytes <= s.maxBytes)
			if fits {
				batch = append(batch, r)
				total += r.n
				bytes += r.bytes
				s.queued--
			} else {
				kept = append(kept, r)
			}
		}
		s.lanes[li] = kept
	}
	return batch, total, bytes
}

// form blocks for a first request and gathers a batch around it; nil once
// the scheduler closes.
func (s *scheduler) form() []*request {
	var batch []*request
	var total, bytes int64
	for {
		s.mu.Lock()
		if len(batch) == 0 {
			// Only the head of the highest non-empty lane may start a batch;
			// below lane 0 only if that leaves the reserved instances free
			// (the dispatcher holds one; len(slots) are the others).
			for li := range s.lanes {
				if li > 0 && len(s.m.slots) < s.reserved {
					break
				}
				if len(s.lanes[li]) > 0 {
					r := s.lanes[li][0]
					s.lanes[li] = s.lanes[li][1:]
					s.queued--
					batch, total, bytes = []*request{r}, r.n, r.bytes
					break
				}
			}
		}
		if len(batch) > 0 {
			batch, total, bytes = s.take(batch, total, bytes)
		}
		s.mu.Unlock()
		if len(batch) > 0 {
			full := !s.batching || total >= s.m.Spec.MaxBatchSize || s.preferred[total]
			wait := s.delay - time.Since(batch[0].enq)
			if full || wait <= 0 {
				return batch
			}
			t := time.NewTimer(wait)
			select {
			case <-s.notify:
			case <-t.C:
			case <-s.closing:
			}
			t.Stop()
			continue
		}
		select {
		case <-s.notify:
		case <-s.freed:
		case <-s.closing:
			return nil
		}
	}
}

// run executes one batch on an instance and hands each request its part.
func (s *scheduler) run(batch []*request) {
	start := time.Now()
	// Requests whose callers have gone are pointless: drop them.
	live := batch[:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- result{err: ctxStatus(err, "while queued")}
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	var total int64
	for _, r := range live {
		total += r.n
	}
	var outs []*tensor.Tensor
	var err error
	var input time.Duration
	if s.m.io != nil {
		// Bound I/O: the batch is assembled in the instance's buffers. The
		// instance holds a slot, so one is free.
		io := <-s.m.io
		outs, input, err = io.run(s.m.sess, live, total)
		s.m.io <- io
	} else {
		inputs := live[0].inputs
		if len(live) > 1 {
			inputs = concat(live, total)
		}
		input = time.Since(start)
		outs, err = s.m.sess.run(inputs)
	}
	compute := time.Since(start)
	infer := compute - input
	if err != nil {
		if isDeviceLost(err) && s.m.lost != nil {
			s.m.lost(err)
		}
		err = runError(s.m.String(), err)
	}
	// Split first, count, then answer: a caller that reads the statistics
	// once it has its answer sees its own batch in them.
	results := make([]result, len(live))
	var off int64
	for k, r := range live {
		res := result{err: err, tm: Timings{Queue: start.Sub(r.enq), Compute: compute, Input: input, Infer: infer}}
		if err == nil && len(live) == 1 && r.into == nil {
			res.outs = outs // the batch is the request's own
		} else if err == nil {
			res.outs = make([]*tensor.Tensor, len(outs))
			for i, o := range outs {
				if d := r.intoOf(i); d != nil { // the bound run copied it there
					res.outs[i] = &tensor.Tensor{Name: o.Name, DType: o.DType, Shape: o.Shape, Device: d}
					if len(live) > 1 {
						res.outs[i].Shape = append([]int64{r.n}, o.Shape[1:]...)
					}
					continue
				}
				if len(live) == 1 {
					res.outs[i] = o
					continue
				}
				if len(o.Shape) == 0 || o.Shape[0] != total {
					res.err = status.Errorf(codes.Internal, "model %s: output %q has no batch axis of %d", s.m, o.Name, total)
					break
				}
				res.outs[i] = batchSlice(o, off, off+r.n)
			}
		}
		off += r.n
		results[k] = res
	}
	output := time.Since(start) - input - infer
	s.m.stats.batch(total, input, infer, output)
	for k, r := range live {
		results[k].tm.Output = output
		r.done <- results[k]
	}
}

// concat joins the requests' inputs along the batch axis: each request's
// bytes are copied once, into the batch.
func concat(live []*request, total int64) []*tensor.Tensor {
	first := live[0].inputs
	out := make([]*tensor.Tensor, len(first))
	for i, in := range first {
		per := len(in.Data) / int(in.Shape[0])
		data := make([]byte, 0, int(total)*per)
		for _, r := range live {
			data = append(data, r.inputs[i].Data...)
		}
		out[i] = &tensor.Tensor{Name: in.Name, DType: in.DType, Shape: append([]int64{total}, in.Shape[1:]...), Data: data}
	}
	return out
}

// drain answers every queued request UNAVAILABLE (why) and refuses new
// ones; batches already running finish. It returns how many it answered.
func (s *scheduler) drain(why string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = why
	n := 0
	for li, lane := range s.lanes {
		for _, r := range lane {
			r.done <- result{err: status.Errorf(codes.Unavailable, "model %s: %s", s.m, why)}
			n++
		}
		s.lanes[li] = nil
	}
	s.queued = 0
	return n
}

// close stops forming batches; queued requests get UNAVAILABLE.
func (s *scheduler) close() {
	close(s.closing)
	<-s.finished
	s.mu.Lock()
	defer s.mu.Unlock()
	for li, lane := range s.lanes {
		for _, r := range lane {
			r.done <- result{err: status.Errorf(codes.Unavailable, "model %s was unloaded", s.m)}
		}
		s.lanes[li] = nil
	}
	s.queued = 0
}

// itemKey is what must be equal for requests to share a batch: every
// input's type and per-item shape.
func itemKey(inputs []*tensor.Tensor) string {
	b := make([]byte, 0, 64)
	for _, in := range inputs {
		b = append(b, in.DType...)
		for _, d := range in.Shape[1:] {
			b = strconv.AppendInt(append(b, ','), d, 10)
		}
		b = append(b, ';')
	}
	return string(b)
}
