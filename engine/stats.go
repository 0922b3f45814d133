package engine

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// stats are a model version's counters, in Triton's terms: requests
// (success, failure), inferences (batch items) and executions (batches).
type stats struct {
	success, failure, rejected, expired atomic.Int64
	inferences, executions              atomic.Int64
	// Cumulative nanoseconds: per request (request, queue) and per
	// execution (input assembly, inference, output split).
	requestNs, queueNs         atomic.Int64
	successNs, failureNs       atomic.Int64
	inputNs, inferNs, outputNs atomic.Int64
	// Per successful request that ran: the times of its batch (Triton's
	// inference_stats compute_*; a batch of k counts k times).
	computed                            atomic.Int64
	reqInputNs, reqInferNs, reqOutputNs atomic.Int64
	last                                atomic.Int64 // unix ns of the last execution
	mu                                  sync.Mutex
	sizes                               map[int64]*BatchStats
}

// BatchStats are the executions of one batch size and their time.
type BatchStats struct {
	Count                int64
	Input, Infer, Output time.Duration
}

func (s *stats) request(err error, total time.Duration, tm Timings) {
	if err == nil {
		s.success.Add(1)
		if tm.Compute > 0 {
			s.computed.Add(1)
			s.reqInputNs.Add(tm.Input.Nanoseconds())
			s.reqInferNs.Add(tm.Infer.Nanoseconds())
			s.reqOutputNs.Add(tm.Output.Nanoseconds())
		}
	} else {
		s.failure.Add(1)
	}
	s.requestNs.Add(total.Nanoseconds())
	s.queueNs.Add(tm.Queue.Nanoseconds())
	if err == nil {
		s.successNs.Add(total.Nanoseconds())
	} else {
		s.failureNs.Add(total.Nanoseconds())
	}
}

func (s *stats) batch(n int64, input, infer, output time.Duration) {
	s.inferences.Add(n)
	s.executions.Add(1)
	s.inputNs.Add(input.Nanoseconds())
	s.inferNs.Add(infer.Nanoseconds())
	s.outputNs.Add(output.Nanoseconds())
	s.last.Store(time.Now().UnixNano())
	s.mu.Lock()
	b := s.sizes[n]
	if b == nil {
		b = &BatchStats{}
		s.sizes[n] = b
	}
	b.Count++
	b.Input += input
	b.Infer += infer
	b.Output += output
	s.mu.Unlock()
}

// Stats is a snapshot of a model version's counters.
type Stats struct {
	Success, Failure int64
	// Rejected counts requests refused because the queue was full, Expired
	// those whose deadline passed in the queue (both also in Failure).
	Rejected, Expired      int64
	Inferences, Executions int64
	// Cumulative: RequestTime and QueueTime over requests; InputTime
	// (batch assembly), InferTime (the model) and OutputTime (splitting
	// results) over executions.
	RequestTime, QueueTime           time.Duration
	SuccessTime, FailureTime         time.Duration
	InputTime, InferTime, OutputTime time.Duration
	// Computed counts the successful requests that ran, and the Request*
	// times sum their batches' times over them: Triton's inference_stats
	// compute_input, compute_infer and compute_output, which tools such as
	// perf_analyzer average per request.
	Computed                                              int64
	RequestInputTime, RequestInferTime, RequestOutputTime time.Duration
	// LastInference is when the last batch ran (zero if none).
	LastInference time.Time
	// BatchSizes are the executions by batch size.
	BatchSizes map[int64]BatchStats
	// QueueDepth is the number of requests waiting, per priority level.
	QueueDepth []int
}

// Stats returns the model's counters.
func (m *Model) Stats() Stats {
	s := &m.stats
	out := Stats{Success: s.success.Load(), Failure: s.failure.Load(), Rejected: s.rejected.Load(), Expired: s.expired.Load(),
		Inferences: s.inferences.Load(), Executions: s.executions.Load(),
		RequestTime: time.Duration(s.requestNs.Load()), QueueTime: time.Duration(s.queueNs.Load()),
		InputTime: time.Duration(s.inputNs.Load()), InferTime: time.Duration(s.inferNs.Load()), OutputTime: time.Duration(s.outputNs.Load()),
		SuccessTime: time.Duration(s.successNs.Load()), FailureTime: time.Duration(s.failureNs.Load()),
		Computed: s.computed.Load(), RequestInputTime: time.Duration(s.reqInputNs.Load()),
		RequestInferTime: time.Duration(s.reqInferNs.Load()), RequestOutputTime: time.Duration(s.reqOutputNs.Load()),
		BatchSizes: map[int64]BatchStats{}, QueueDepth: m.sched.depth()}
	if ns := s.last.Load(); ns != 0 {
		out.LastInference = time.Unix(0, ns)
	}
	s.mu.Lock()
	for k, v := range s.sizes {
		out.BatchSizes[k] = *v
	}
	s.mu.Unlock()
	return out
}

// SortedSizes lists the batch sizes seen, ascending.
func (s Stats) SortedSizes() []int64 {
	out := make([]int64, 0, len(s.BatchSizes))
	for k := range s.BatchSizes {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
