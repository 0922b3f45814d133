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
	success, failure, rejected atomic.Int64
	inferences, executions     atomic.Int64
	computeNs                  atomic.Int64
	mu                         sync.Mutex
	sizes                      map[int64]int64 // executions by batch size
}

func (s *stats) request(err error) {
	if err == nil {
		s.success.Add(1)
	} else {
		s.failure.Add(1)
	}
}

func (s *stats) batch(n int64, compute time.Duration) {
	s.inferences.Add(n)
	s.executions.Add(1)
	s.computeNs.Add(compute.Nanoseconds())
	s.mu.Lock()
	s.sizes[n]++
	s.mu.Unlock()
}

// Stats is a snapshot of a model version's counters.
type Stats struct {
	Success, Failure int64
	// Rejected counts requests refused because the queue was full (also
	// in Failure).
	Rejected               int64
	Inferences, Executions int64
	ComputeTime            time.Duration
	// BatchSizes counts executions by batch size.
	BatchSizes map[int64]int64
	// QueueDepth is the number of requests waiting, per priority level.
	QueueDepth []int
}

// Stats returns the model's counters.
func (m *Model) Stats() Stats {
	s := &m.stats
	out := Stats{Success: s.success.Load(), Failure: s.failure.Load(), Rejected: s.rejected.Load(),
		Inferences: s.inferences.Load(), Executions: s.executions.Load(),
		ComputeTime: time.Duration(s.computeNs.Load()), BatchSizes: map[int64]int64{}, QueueDepth: m.sched.depth()}
	s.mu.Lock()
	for k, v := range s.sizes {
		out.BatchSizes[k] = v
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
